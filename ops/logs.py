"""Decision-log upkeep: prompt retention and window exports (``tier-router log retain|export``).

Both work on a database already at the newest schema revision (opening a ``DecisionLog``, or
``tier-router log migrate``, gets it there) and raise :class:`LogUpkeepError` for bad input.
Times are timezone-aware; the windows are ``since <= created_at < until``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Engine,
    Float,
    Integer,
    and_,
    func,
    or_,
    select,
    update,
)

from router.config import DecisionLogRetention
from router.errors import RouterError
from router.telemetry import decisions, schema_head, schema_revision, window_query

logger = logging.getLogger(__name__)

EXPORT_FORMATS = (".jsonl", ".parquet")
# Rows fetched (and, for Parquet, written as one row group) at a time: bounds memory on long
# windows (rows).
EXPORT_BATCH_ROWS = 5_000


class LogUpkeepError(RouterError, ValueError):
    """Bad input to an upkeep job (naive or reversed times, unknown format, stale schema)."""


def require_aware(name: str, when: datetime) -> datetime:
    """``when`` if it has a UTC offset; else :class:`LogUpkeepError` naming ``name``."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise LogUpkeepError(f"{name} must carry a UTC offset (e.g. 2025-03-01T00:00:00Z), "
                             f"got {when.isoformat()}")
    return when


def _require_head(engine: Engine) -> None:
    revision, has_table = schema_revision(engine)
    head = schema_head()
    if not has_table or revision != head:
        found = f"revision {revision}" if has_table and revision else (
            "an unversioned decisions table" if has_table else "no decisions table")
        raise LogUpkeepError(f"decision log has {found}, not the current {head}: run "
                             f"`tier-router log migrate --db URL` first")


# -- retention --------------------------------------------------------------------------------


def _expired(retention: DecisionLogRetention, now: datetime) -> ColumnElement[bool] | None:
    """The condition of rows whose prompt is past its tenant's retention; None: none can be."""
    created, tenant = decisions.c.created_at, decisions.c.tenant
    clauses = [and_(tenant == name, created < now - timedelta(days=days))
               for name, days in retention.tenants.items()]
    if retention.prompt_days is not None:
        default = created < now - timedelta(days=retention.prompt_days)
        if retention.tenants:
            default = and_(tenant.not_in(list(retention.tenants)), default)
        clauses.append(default)
    return or_(*clauses) if clauses else None


def retain_prompts(engine: Engine, retention: DecisionLogRetention, *, now: datetime,
                   dry_run: bool = False) -> dict[str, int]:
    """Clear ``text`` (set NULL) of rows created before ``now`` minus their tenant's days.

    Only the prompt goes: the row, ``text_hash`` and every metric stay. Rows already cleared are
    not counted again, so a second run at the same ``now`` returns ``{}``. ``dry_run``: count,
    change nothing. Returns ``{tenant: prompts cleared (or that would be)}``, tenants with none
    left out. One transaction.
    """
    require_aware("now", now)
    _require_head(engine)
    expired = _expired(retention, now)
    if expired is None:
        return {}
    where = and_(decisions.c.text.is_not(None), expired)
    with engine.begin() as conn:
        if dry_run:
            query = (select(decisions.c.tenant, func.count()).where(where)
                     .group_by(decisions.c.tenant))
            counts = {tenant: int(n) for tenant, n in conn.execute(query)}
        else:
            # RETURNING (PostgreSQL, SQLite >= 3.35): the counts are of exactly the rows changed.
            statement = update(decisions).where(where).values(text=None).returning(
                decisions.c.tenant)
            counts = dict(Counter(conn.execute(statement).scalars()))
    logger.info("decision log: %s %d prompt(s) older than their retention (now %s): %s",
                "would clear" if dry_run else "cleared", sum(counts.values()), now.isoformat(),
                counts)
    return dict(sorted(counts.items()))


# -- export -----------------------------------------------------------------------------------


def export_format(out: Path) -> str:
    """``.jsonl`` or ``.parquet``: the format named by ``out``'s suffix; else
    :class:`LogUpkeepError`."""
    suffix = out.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise LogUpkeepError(f"{out}: unknown export format {out.suffix or '(no suffix)'!r}; "
                             f"use {' or '.join(EXPORT_FORMATS)}")
    return suffix


def check_window(since: datetime, until: datetime) -> None:
    """Both times tz-aware and ``since < until``; else :class:`LogUpkeepError`."""
    require_aware("since", since)
    require_aware("until", until)
    if since >= until:
        raise LogUpkeepError(f"since ({since.isoformat()}) must be before until "
                             f"({until.isoformat()})")


def _export_value(name: str, value: Any, *, json_text: bool) -> Any:
    """One cell as exported: times as ISO-8601 UTC, JSON columns as objects or (Parquet) text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if json_text and value is not None and isinstance(decisions.c[name].type, JSON):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _arrow_schema() -> Any:
    """The Parquet schema: one field per ``decisions`` column, in table order (a
    ``pyarrow.Schema``). Times and JSON columns are strings (ISO-8601 UTC, JSON text)."""
    import pyarrow as pa

    def arrow_type(sql_type: Any) -> Any:
        # Boolean before Integer; the timestamp TypeDecorator and JSON fall through to string.
        if isinstance(sql_type, Boolean):
            return pa.bool_()
        if isinstance(sql_type, Integer):
            return pa.int64()
        if isinstance(sql_type, Float):
            return pa.float64()
        return pa.string()

    return pa.schema([pa.field(c.name, arrow_type(c.type), nullable=c.nullable)
                      for c in decisions.columns])


@contextlib.contextmanager
def _atomic_file(out: Path) -> Iterator[IO[bytes]]:
    """A temp file beside ``out``, renamed onto it only when the block succeeds (so readers
    never see half an export and a failure leaves no file); removed otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _batches(engine: Engine, since: datetime, until: datetime,
             tenant: str | None) -> Iterator[list[Mapping[str, Any]]]:
    """The window's rows, oldest first, ``EXPORT_BATCH_ROWS`` at a time."""
    query = window_query(since=since, until=until, tenant=tenant)
    with engine.connect() as conn:
        # stream_results: a server-side cursor on PostgreSQL, so a long window is not fetched
        # whole into memory.
        result = conn.execution_options(stream_results=True,
                                         yield_per=EXPORT_BATCH_ROWS).execute(query)
        yield from result.mappings().partitions()


def export_window(engine: Engine, out: Path, *, since: datetime, until: datetime,
                  tenant: str | None = None) -> int:
    """Write every column of the rows with ``since <= created_at < until`` (and ``tenant``) to
    ``out``, oldest first; return the row count.

    ``out``'s suffix picks the format: ``.jsonl`` (one JSON object per row, JSON columns
    nested) or ``.parquet`` (JSON columns as JSON text). Timestamps are ISO-8601 UTC strings
    (``2025-03-01T12:00:00.123456+00:00``) in both. ``out`` appears whole or not at all (temp
    file + rename). Bad input: :class:`LogUpkeepError`, nothing written.
    """
    kind = export_format(out)
    check_window(since, until)
    _require_head(engine)
    rows = 0
    with _atomic_file(out) as fh:
        if kind == ".jsonl":
            for batch in _batches(engine, since, until, tenant):
                fh.write(b"".join(
                    (json.dumps({name: _export_value(name, value, json_text=False)
                                 for name, value in row.items()},
                                ensure_ascii=False, default=str) + "\n").encode("utf-8")
                    for row in batch))
                rows += len(batch)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = _arrow_schema()
            with pq.ParquetWriter(fh, schema) as writer:
                for batch in _batches(engine, since, until, tenant):
                    records = [{name: _export_value(name, value, json_text=True)
                                for name, value in row.items()} for row in batch]
                    try:
                        arrow_rows = pa.Table.from_pylist(records, schema=schema)
                    except pa.ArrowException as exc:
                        # A value the column's type cannot hold (SQLite does not enforce types).
                        raise LogUpkeepError(f"{out}: rows with ids {batch[0]['id']}.."
                                             f"{batch[-1]['id']} do not fit the Parquet "
                                             f"schema: {exc}") from exc
                    writer.write_table(arrow_rows)
                    rows += len(batch)
    logger.info("decision log: exported %d row(s) from %s to %s to %s", rows, since.isoformat(),
                until.isoformat(), out)
    return rows
