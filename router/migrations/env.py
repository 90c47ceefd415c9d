"""Alembic environment of the decision log (the ``decisions`` table).

Run only programmatically, through :func:`router.telemetry.migrate_schema` or by opening a
:class:`router.telemetry.DecisionLog` (``tier-router log migrate --db URL`` from a shell): the
caller passes an open connection, already inside the transaction that holds the schema lock, as
``config.attributes["connection"]``; the caller commits. No ``alembic.ini``, no offline mode.
"""

from __future__ import annotations

from alembic import context

from router.telemetry import VERSION_TABLE


def run_migrations() -> None:
    """Run the pending revisions on the caller's connection."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("the decision-log migrations run through router.telemetry."
                           "migrate_schema (`tier-router log migrate --db URL`), which passes "
                           "the connection; the alembic command line is not supported")
    context.configure(connection=connection, version_table=VERSION_TABLE,
                      target_metadata=None)
    # The caller's transaction is already open: Alembic treats it as external, commits nothing.
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
