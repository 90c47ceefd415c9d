"""Add variant and shadow.

``variant`` (the A/B test arm, indexed) and ``shadow`` (the shadow challenger's would-be
decision, JSON): both nullable, so rows written before them read back as None.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the two columns (plain ``ALTER TABLE ... ADD COLUMN`` on SQLite and PostgreSQL)."""
    op.add_column("decisions", sa.Column("variant", sa.String(), nullable=True))
    op.create_index("ix_decisions_variant", "decisions", ["variant"])
    op.add_column("decisions", sa.Column("shadow", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop both columns and their data (batch mode: SQLite rebuilds the table)."""
    op.drop_index("ix_decisions_variant", table_name="decisions")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("shadow")
        batch.drop_column("variant")
