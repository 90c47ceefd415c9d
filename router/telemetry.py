"""One :class:`DecisionRecord` per request, written to a SQL decision log and to Prometheus metrics.

The request path calls :meth:`DecisionLog.record`, which only updates in-process metrics and puts
a snapshot of the record on a queue; one background thread writes the queue to the ``decisions``
table in batches. No record is dropped: a batch the database keeps refusing is appended to a JSON
lines *spill file* and re-inserted later (:meth:`DecisionLog.recover_spill`, also run at start and
automatically once the database accepts writes again).

The same code serves SQLite (the default, ``sqlite:///var/decisions.sqlite``) and PostgreSQL
(``postgresql+psycopg://user@host:port/db``). Timestamps are stored in UTC and read back as
timezone-aware UTC datetimes on both.

The schema is versioned with Alembic (revisions in ``router/migrations/versions``, run in code,
never from an ``alembic.ini``): opening a :class:`DecisionLog` upgrades its database to the newest
revision, and :func:`migrate_schema` (``tier-router log migrate``) does the same alone. A
database made before migrations existed (the table, no version table) is stamped with the
baseline revision first. The :data:`decisions` table below must equal the head revision.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Double,
    Engine,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    column,
    create_engine,
    func,
    inspect,
    select,
    table,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.pool import StaticPool

from router.errors import RouterError

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

DEFAULT_SPILL_PATH = Path("var") / "decisions.spill.jsonl"
# First retry delay of a failed batch write, doubled on each further retry (seconds).
BACKOFF_START_S = 0.05
# While the database is down each batch gets one try; batches may then grow to this many times
# batch_size so that draining a long queue on close() takes few (slow) failed connects.
_DEGRADED_BATCH_FACTOR = 50
# How long to keep retrying SQLite's switch to WAL while other workers hold the database, and
# the pause between tries (seconds).
_WAL_SWITCH_WAIT_S = 5.0
_WAL_RETRY_S = 0.02
# psycopg waits for a TCP connect forever by default; a writer stuck there stops spilling (seconds).
_PG_CONNECT_TIMEOUT_S = 10
# Histogram buckets for request and step latencies: 0.5 ms .. 30 s (seconds).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0)
# The Alembic script directory, shipped inside the package (package-data in pyproject.toml).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Alembic's version table of the decision log. Not the default ``alembic_version``: MLflow's
# tracking store keeps its own revision there, and the two may share one PostgreSQL database.
VERSION_TABLE = "decisions_alembic_version"
# The revision a table made by the pre-migration ``metadata.create_all`` is stamped with.
BASELINE_REVISION = "0001"
# pg_advisory_xact_lock key (any constant bigint, the same in every worker): serialises schema
# upgrades of workers starting at once. Bytes of "tierrtr".
_PG_SCHEMA_LOCK_KEY = 0x74_69_65_72_72_74_72


def hash_text(text: str) -> str:
    """``DecisionRecord.text_hash`` of a normalised request text: its sha256, 64 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class DecisionRecord:
    """Everything the router decided and observed for one request; one row of ``decisions``.

    ``created_at`` must be timezone-aware. Dict and list fields are stored as JSON, so they must
    hold JSON values (anything else is written as its ``str()``).
    """

    request_id: str
    tenant: str
    text_hash: str  # sha256 hex of the normalised request text
    requested_model: str  # "auto", a tier name, or a configured model id
    created_at: datetime = field(default_factory=_utcnow)
    # The normalised request text: what harvest trains on. Raw user text (may hold personal
    # data): the harvest stage scrubs it before anything leaves the stage.
    text: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # tier -> calibrated probability
    predicted_tier: str | None = None
    confidence: float | None = None
    gate_action: str | None = None  # "route" | "cascade" | "escalate" | None (override / pinned)
    override_rule: str | None = None
    override_domain: str | None = None
    pinned: bool = False
    target_tier: str | None = None  # the tier the decision sent the request to
    # the operating point: {"price_weight", "trust", "escalate", "score_threshold"}
    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_source: str | None = None  # "config" | "model:<version>" | "ab:<variant>"
    deployments_tried: list[str] = field(default_factory=list)  # call order, failed ones included
    # {"kind": "deployment"|"tier", "from": .., "to": .., "reason": ..}
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    final_tier: str | None = None
    final_model: str | None = None  # deployment id that answered
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    # per step, milliseconds: normalise, override, classify, gate, dispatch, total
    latency_ms: dict[str, float] = field(default_factory=dict)
    status: str = "ok"  # "ok" | "error"
    error: str | None = None
    model_version: str | None = None
    cache_status: str | None = None  # "miss" | "exact" | "semantic" | None (cache not consulted)
    cache_similarity: float | None = None
    feedback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # forward-compatible extra fields
    variant: str | None = None  # the A/B test arm the request was assigned (config ab.variants)
    # The shadow challenger's would-be decision for this request (JSON object); None: no shadow.
    shadow: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None:
            raise ValueError(f"DecisionRecord.created_at must be timezone-aware, "
                             f"got {self.created_at!r}")

    def to_row(self) -> dict[str, Any]:
        """``{column: value}`` for the ``decisions`` table; JSON fields are deep copies."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _JSON_FIELDS:
            row[name] = copy.deepcopy(row[name])
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DecisionRecord:
        """The record of a ``decisions`` row, a :meth:`to_row` dict or a spill-file line.

        Unknown keys (``id``, columns of a newer version) are ignored; missing keys and NULLs in
        non-optional fields take the defaults. ``created_at`` may be an ISO string; naive
        datetimes are read as UTC (SQLite stores UTC without an offset).
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in row:
                continue
            value = row[f.name]
            if value is None and f.name in _NOT_NULL_FIELDS:
                continue
            values[f.name] = value
        created = values.get("created_at")
        if isinstance(created, str):
            created = datetime.fromisoformat(created)
        if isinstance(created, datetime) and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        if created is not None:
            values["created_at"] = created
        return cls(**values)


# Stored as JSON and deep-copied by to_row(); all but "shadow" are NOT NULL (default: empty).
_JSON_FIELDS = ("scores", "thresholds", "deployments_tried", "fallbacks", "latency_ms", "extra",
                "shadow")
_NOT_NULL_FIELDS = frozenset({*(name for name in _JSON_FIELDS if name != "shadow"), "created_at",
                              "pinned", "status"})


class _UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC; SQLite keeps it as naive UTC text."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: decision log times must be tz-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# Revision 0002 of router/migrations (tests/router/test_migrations.py compares the two).
decisions = Table(
    "decisions", metadata,
    # Surrogate key: a stable tie-break for rows with equal created_at.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("request_id", String, nullable=False, unique=True, index=True),
    Column("tenant", String, nullable=False, index=True),
    Column("text_hash", String, nullable=False),
    Column("requested_model", String, nullable=False),
    Column("created_at", _UTCDateTime, nullable=False, index=True),
    Column("text", Text),
    Column("scores", JSON, nullable=False),
    Column("predicted_tier", String),
    Column("confidence", Double),
    Column("gate_action", String),
    Column("override_rule", String),
    Column("override_domain", String),
    Column("pinned", Boolean, nullable=False),
    Column("target_tier", String),
    Column("thresholds", JSON, nullable=False),
    Column("threshold_source", String),
    Column("deployments_tried", JSON, nullable=False),
    Column("fallbacks", JSON, nullable=False),
    Column("final_tier", String),
    Column("final_model", String),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost_usd", Double),
    Column("latency_ms", JSON, nullable=False),
    Column("status", String, nullable=False),
    Column("error", Text),
    Column("model_version", String),
    Column("cache_status", String),
    Column("cache_similarity", Double),
    Column("feedback", Text),
    Column("extra", JSON, nullable=False),
    Column("variant", String, index=True),
    # none_as_null: None is SQL NULL (``shadow IS NULL`` finds it), not the JSON text 'null'.
    Column("shadow", JSON(none_as_null=True)),
)


def _label(value: str | None) -> str:
    return "none" if value is None else str(value)


def _seconds(ms: Any) -> float | None:
    """``ms`` in seconds, or None where it is not a finite, non-negative number."""
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms) or ms < 0:
        return None
    return ms / 1000.0


class RouterMetrics:
    """The router's Prometheus metrics, in their own registry (several instances can coexist).

    Serve :meth:`exposition` with ``content_type`` on ``/metrics``.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("tier_router_requests_total", "Requests by outcome",
                                ["final_tier", "gate_action", "status"], registry=r)
        self.cost_usd = Counter("tier_router_cost_usd_total", "Provider cost, USD",
                                ["final_tier"], registry=r)
        self.escalations = Counter("tier_router_escalations_total",
                                   "Requests sent above the predicted tier", ["reason"], registry=r)
        self.overrides = Counter("tier_router_overrides_total",
                                 "Requests routed by a domain override rule", ["domain"],
                                 registry=r)
        self.fallbacks = Counter("tier_router_fallbacks_total",
                                 "Fallbacks to another deployment or tier", ["kind"], registry=r)
        self.step_latency = Histogram("tier_router_step_latency_seconds",
                                      "Latency of one request step", ["step"],
                                      buckets=LATENCY_BUCKETS_S, registry=r)
        self.request_latency = Histogram("tier_router_request_latency_seconds",
                                         "End-to-end request latency",
                                         buckets=LATENCY_BUCKETS_S, registry=r)
        self.cache_requests = Counter("tier_router_cache_requests_total",
                                      "Cache lookups by result", ["status"], registry=r)
        self.decision_log_errors = Counter("tier_router_decision_log_errors_total",
                                           "Failed decision-log database writes (each try)",
                                           registry=r)
        self.decision_log_spilled = Counter("tier_router_decision_log_spilled_total",
                                            "Decision records written to the spill file",
                                            registry=r)
        self.shadow = Counter("tier_router_shadow_total",
                              "Requests the shadow challenger scored, by agreement with the "
                              "live target tier", ["agrees"], registry=r)
        self.shadow_escalations = Counter("tier_router_shadow_escalations_total",
                                          "Requests the shadow challenger's gate would have "
                                          "escalated", registry=r)
        self.shadow_cost_usd = Counter("tier_router_shadow_est_cost_usd_total",
                                       "Estimated cost at the live and the would-be tier, USD",
                                       ["which"], registry=r)

    def observe(self, rec: DecisionRecord) -> None:
        """Count one finished request. Cheap; safe from any thread."""
        self.requests.labels(final_tier=_label(rec.final_tier),
                             gate_action=_label(rec.gate_action),
                             status=_label(rec.status)).inc()
        cost = rec.cost_usd
        if cost is not None:
            if math.isfinite(cost) and cost >= 0:
                self.cost_usd.labels(final_tier=_label(rec.final_tier)).inc(cost)
            else:
                logger.warning("request %s: cost_usd %r not counted", rec.request_id, cost)
        reason = rec.extra.get("escalation_reason")
        if reason is None and rec.gate_action == "escalate":
            reason = "gate"
        if reason is not None:
            self.escalations.labels(reason=_label(reason)).inc()
        if rec.override_rule is not None or rec.override_domain is not None:
            self.overrides.labels(domain=_label(rec.override_domain)).inc()
        for fallback in rec.fallbacks:
            self.fallbacks.labels(kind=_label(fallback.get("kind"))).inc()
        for step, ms in rec.latency_ms.items():
            seconds = _seconds(ms)
            if seconds is None:
                continue
            if step == "total":
                self.request_latency.observe(seconds)
            else:
                self.step_latency.labels(step=step).observe(seconds)
        if rec.cache_status is not None:
            self.cache_requests.labels(status=rec.cache_status).inc()
        if rec.shadow and "error" not in rec.shadow:
            self._observe_shadow(rec.shadow)

    def _observe_shadow(self, shadow: Mapping[str, Any]) -> None:
        """The challenger's would-be decision (router.shadow): agreement, escalation, cost."""
        self.shadow.labels(agrees=str(bool(shadow.get("agrees"))).lower()).inc()
        if shadow.get("gate_action") == "escalate":
            self.shadow_escalations.inc()
        for which, key in (("live", "live_est_cost_usd"), ("would_be", "est_cost_usd")):
            cost = shadow.get(key)
            if isinstance(cost, int | float) and math.isfinite(cost) and cost >= 0:
                self.shadow_cost_usd.labels(which=which).inc(cost)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


def _dumps(value: Any) -> str:
    # default=str: a stray non-JSON value in ``extra`` must not cost the whole record.
    return json.dumps(value, default=str, ensure_ascii=False)


def _spill_line(row: Mapping[str, Any]) -> bytes:
    return (_dumps({**row, "created_at": row["created_at"].isoformat()}) + "\n").encode("utf-8")


def _is_row_error(exc: SQLAlchemyError) -> bool:
    """Whether ``exc`` blames the data (retrying cannot help) rather than the database."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    # Raised while binding a value (e.g. a naive datetime), before any database round trip.
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def brief_error(exc: BaseException) -> str:
    """The driver's message of a database error, without SQLAlchemy's statement and parameters:
    one line, ``"OperationalError: ..."``."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc).split("\n[SQL:", 1)[0]
    return f"{type(orig or exc).__name__}: {' '.join(text.split())}"


def window_query(*, since: datetime | None = None, until: datetime | None = None,
                 tenant: str | None = None) -> Select[Any]:
    """The ``decisions`` rows with ``since <= created_at < until`` (either open; tz-aware) and
    ``tenant`` (None: all), oldest first: what :meth:`DecisionLog.read`, the reports and the
    export read. A naive bound is a ``ValueError``."""
    query = select(decisions).order_by(decisions.c.created_at, decisions.c.id)
    for name, bound in (("since", since), ("until", until)):
        if bound is not None and bound.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware, got {bound!r}")
    if since is not None:
        query = query.where(decisions.c.created_at >= since)
    if until is not None:
        query = query.where(decisions.c.created_at < until)
    if tenant is not None:
        query = query.where(decisions.c.tenant == tenant)
    return query


def _create_engine(url: str) -> tuple[Engine, bool]:
    """The engine for ``url`` and whether it is an in-memory SQLite database."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": _dumps}
    in_memory = False
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in database:
            # One shared connection, else the writer thread would see its own empty database.
            in_memory = True
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        elif not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    elif backend == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": _PG_CONNECT_TIMEOUT_S}
    return create_engine(parsed, **kwargs), in_memory


def create_log_engine(url: str) -> Engine:
    """An engine for the decision log at ``url``, set up as :class:`DecisionLog` sets up its own
    (JSON serialiser, PostgreSQL connect timeout, SQLite folder created). For upkeep jobs; an
    in-memory SQLite URL gives a new, empty database."""
    return _create_engine(url)[0]


class SchemaError(RouterError):
    """The decision log's database is at a revision this code cannot upgrade (a newer one)."""


@dataclass(frozen=True)
class SchemaUpgrade:
    """What an upgrade found and left: revisions of ``router/migrations``.

    ``before``: the revision found; None for a database without the ``decisions`` table.
    ``after``: the revision now (the head, unless the database was at a newer, unknown one).
    ``unversioned``: the table predated migrations and was stamped ``BASELINE_REVISION`` first
    (``before`` is then that revision).
    """

    before: str | None
    after: str
    unversioned: bool = False


def _quiet_alembic() -> None:
    """Call before importing alembic (imported lazily for this): its import logs each of its
    seven plugins at INFO, noise on every worker start and CLI run."""
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def schema_head() -> str:
    """The newest revision of ``router/migrations``: the schema this code writes."""
    _quiet_alembic()
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:
        raise SchemaError(f"no migration revisions under {MIGRATIONS_DIR}")
    return head


def schema_revision(engine: Engine) -> tuple[str | None, bool]:
    """(the revision stamped in the database or None, whether the ``decisions`` table exists)."""
    with engine.connect() as conn:
        return _schema_state(conn)


def migrate_schema(url: str) -> SchemaUpgrade:
    """Upgrade the decision log at ``url`` to :func:`schema_head`; a no-op when it is there.

    Raises :class:`SchemaError` for a database at a revision unknown here (made by newer code),
    ``SQLAlchemyError`` when the database cannot be reached or refuses the change.
    """
    engine, _ = _create_engine(url)
    try:
        return _upgrade_schema(engine, newer_ok=False)
    finally:
        engine.dispose()


def _alembic_config(conn: Connection) -> Config:
    """Alembic's config, in code: the packaged scripts, run on ``conn`` (see migrations/env.py)."""
    _quiet_alembic()
    from alembic.config import Config

    config = Config()
    # ConfigParser interpolates '%': a path holding one must not be read as a reference.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = conn
    return config


def _schema_state(conn: Connection) -> tuple[str | None, bool]:
    # Read directly, not through Alembic's MigrationContext: that logs two INFO lines per call,
    # i.e. on every worker start.
    inspector = inspect(conn)
    revision: str | None = None
    if inspector.has_table(VERSION_TABLE):
        version_num = column("version_num", String)
        revisions = list(conn.execute(select(version_num).select_from(table(VERSION_TABLE)))
                         .scalars())
        if len(revisions) > 1:
            raise SchemaError(f"{VERSION_TABLE} holds several revisions {revisions}; the "
                              f"decision log's migrations have no branches")
        revision = revisions[0] if revisions else None
    return revision, inspector.has_table(decisions.name)


@contextlib.contextmanager
def _schema_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection inside one transaction that holds the schema lock; committed on success.

    The whole upgrade is one transaction, so another worker never sees half of it: PostgreSQL
    has transactional DDL and an advisory lock orders the workers; SQLite gets the same from
    ``BEGIN IMMEDIATE`` (the database's write lock; the driver's own transaction handling is
    switched off, else it would commit before each DDL statement).
    """
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK_KEY)))
                yield conn
            return
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(SQLAlchemyError):  # SQLite may have rolled back already
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")


def _upgrade_schema(engine: Engine, *, newer_ok: bool) -> SchemaUpgrade:
    """Upgrade to the head; ``newer_ok``: a newer, unknown revision is logged and left alone
    (a worker of the previous release starting after the new one migrated) instead of raising
    :class:`SchemaError`."""
    head = schema_head()  # imports alembic quietly first
    from alembic.util import CommandError

    try:
        with _schema_transaction(engine) as conn:
            return _upgrade_on(conn, head, newer_ok=newer_ok)
    except (SQLAlchemyError, CommandError) as exc:
        # Several workers starting at once (or a lock wait running out): another one may have
        # upgraded it meanwhile.
        try:
            revision, has_table = schema_revision(engine)
        except SQLAlchemyError:
            raise exc from None
        if not (has_table and revision == head):
            raise
        logger.info("decision log: schema upgrade failed (%s) but the database is at %s now",
                    brief_error(exc), head)
        return SchemaUpgrade(before=head, after=head)


def _upgrade_on(conn: Connection, head: str, *, newer_ok: bool) -> SchemaUpgrade:
    revision, has_table = _schema_state(conn)
    if has_table and revision == head:  # every start but the first: touch nothing
        return SchemaUpgrade(before=head, after=head)
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = _alembic_config(conn)
    unversioned = False
    if revision is None and has_table:
        logger.info("decision log: unversioned decisions table (made before migrations); "
                    "stamping revision %s", BASELINE_REVISION)
        command.stamp(config, BASELINE_REVISION)
        revision, unversioned = BASELINE_REVISION, True
    elif revision is not None and not has_table:
        # The table was dropped but not its stamp (e.g. metadata.drop_all): start afresh.
        logger.warning("decision log: %s says revision %s but there is no decisions table; "
                       "creating it", VERSION_TABLE, revision)
        command.stamp(config, "base", purge=True)
        revision = None
    if revision is not None:
        try:
            ScriptDirectory.from_config(config).get_revision(revision)
        except CommandError:
            message = (f"decision log schema is at revision {revision!r}, unknown to this "
                       f"version (head {head}): written by a newer release?")
            if not newer_ok:
                raise SchemaError(message) from None
            logger.warning("%s; writing to it unchanged", message)
            return SchemaUpgrade(before=revision, after=revision)
    if revision != head:
        command.upgrade(config, "head")
        logger.info("decision log: schema upgraded from %s to %s", revision or "(empty)", head)
    return SchemaUpgrade(before=revision, after=head, unversioned=unversioned)


def _use_wal(engine: Engine) -> None:
    """Switch a SQLite file to WAL: readers (harvest, dashboards) then never block the writer,
    nor it them. Kept once set; a no-op when already set."""
    deadline = time.monotonic() + _WAL_SWITCH_WAIT_S
    while True:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        except OperationalError as exc:
            # The switch needs the database to itself and SQLite answers "locked" at once rather
            # than waiting: workers starting together retry until one has switched it.
            if time.monotonic() >= deadline:
                logger.warning("decision log: could not switch %s to WAL (%s); readers may "
                               "block writes", engine.url, brief_error(exc))
                return
            time.sleep(_WAL_RETRY_S)


_STOP = object()


class DecisionLog:
    """The decision log: :meth:`record` enqueues, one background thread writes in batches.

    ``url``: a SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``); its schema is
    created or upgraded to the newest revision (``self.schema``: a :class:`SchemaUpgrade`).
    ``spill_path``: where rows the database refuses go (JSON lines, default
    ``var/decisions.spill.jsonl`` under the current directory). ``batch_size``: rows per insert.
    ``flush_interval_s``: how long a record waits for batch-mates before it is written (seconds).
    ``max_retries``: retries of a failed batch (backoff 0.05 s, doubling) before it is spilled.

    Raises ``SQLAlchemyError`` when the database cannot be reached or upgraded at start.
    """

    def __init__(self, url: str, *, metrics: RouterMetrics | None = None,
                 spill_path: Path | None = None, batch_size: int = 200,
                 flush_interval_s: float = 0.2, max_retries: int = 5,
                 observers: Sequence[Callable[[DecisionRecord], None]] = ()) -> None:
        """``observers``: called with each record as it is recorded (spend tracking...), like
        the metrics; an observer that raises is logged, never fails the request."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must not be negative, got {flush_interval_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries}")
        self.url = url
        self.metrics = metrics
        self.observers = list(observers)
        # Pinned now: a later chdir must not move the spill file.
        self.spill_path = (spill_path if spill_path is not None else DEFAULT_SPILL_PATH).absolute()
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_retries = max_retries
        self._engine, in_memory = _create_engine(url)
        # An in-memory database is one connection shared by all threads: one user at a time.
        self._db_lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if in_memory else contextlib.nullcontext())
        try:
            with self._db_lock:
                self.schema = _upgrade_schema(self._engine, newer_ok=True)
                if self._engine.dialect.name == "sqlite" and not in_memory:
                    _use_wal(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._state_lock = threading.Lock()
        self._closed = False
        self._disposed = False
        # True after a batch was spilled: the database is presumed down until a write succeeds.
        self._degraded = False
        # True while the spill file holds rows from an outage: the next good write recovers them.
        self._recover_pending = False
        try:
            self.recover_spill()
        except (SQLAlchemyError, OSError) as exc:
            self._recover_pending = True
            logger.error("decision log: recovering %s failed, retried after the next write: %s",
                         self.spill_path, brief_error(exc))
        self._thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
        self._thread.start()
        # Queued records are written even if the owner forgets close(); unregistered by close().
        atexit.register(self.close)

    # -- caller side -------------------------------------------------------------------------

    def record(self, rec: DecisionRecord) -> None:
        """Count ``rec`` in the metrics and queue it for writing; never waits for the database.

        A snapshot is queued, so changing ``rec`` afterwards does not change what is written.
        After :meth:`close` the record goes straight to the spill file.
        """
        row = rec.to_row()
        metrics = [self.metrics.observe] if self.metrics is not None else []
        for observe in metrics + self.observers:  # self.metrics may be set after start
            try:
                observe(rec)
            except Exception:  # metrics must never fail a request
                logger.exception("decision log: observer for request %s failed",
                                 rec.request_id)
        with self._state_lock:
            if not self._closed:
                self._queue.put(row)
                return
        logger.warning("decision log is closed; request %s goes to the spill file",
                       rec.request_id)
        self._spill([row], "decision log closed")

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every record queued before this call is written or spilled.

        Raises ``TimeoutError`` after ``timeout_s`` seconds.
        """
        done = threading.Event()
        with self._state_lock:
            closing = self._closed
            if not closing:
                self._queue.put(done)
        if closing:
            # close() queued the stop marker after all records: the thread ends once they're done.
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"decision log not drained within {timeout_s} s")
            return
        if not done.wait(timeout_s):
            raise TimeoutError(f"decision log not flushed within {timeout_s} s "
                               f"(about {self._queue.qsize()} records still queued)")

    def close(self) -> None:
        """Write everything queued, stop the writer thread, release the database. Idempotent."""
        with self._state_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join()
        with self._state_lock:
            if self._disposed:
                return
            self._disposed = True
        self._engine.dispose()
        atexit.unregister(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def read(self, *, since: datetime | None = None, until: datetime | None = None,
             tenant: str | None = None) -> list[DecisionRecord]:
        """Written records with ``since <= created_at < until`` (tz-aware), oldest first.

        Reads only what is written: call :meth:`flush` first for the records just recorded.
        """
        query = window_query(since=since, until=until, tenant=tenant)
        with self._db_lock, self._engine.connect() as conn:
            return [DecisionRecord.from_row(row) for row in conn.execute(query).mappings()]

    def count(self) -> int:
        """The number of written records."""
        with self._db_lock, self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(decisions)).scalar_one())

    def spend(self, since: datetime) -> dict[str, float]:
        """USD spent per tenant by written records created at or after ``since`` (tz-aware)."""
        if since.tzinfo is None:
            raise ValueError(f"since must be timezone-aware, got {since!r}")
        self.flush()
        query = (select(decisions.c.tenant, func.sum(decisions.c.cost_usd))
                 .where(decisions.c.created_at >= since).group_by(decisions.c.tenant))
        with self._db_lock, self._engine.connect() as conn:
            return {tenant: float(total or 0.0) for tenant, total in conn.execute(query)}

    def get(self, request_id: str) -> DecisionRecord | None:
        """The written record of one request (flushes first), or None."""
        self.flush()
        query = select(decisions).where(decisions.c.request_id == request_id).limit(1)
        with self._db_lock, self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else DecisionRecord.from_row(row)

    def set_feedback(self, request_id: str, feedback: str) -> bool:
        """Store ``feedback`` on a request's record; False when no written record has that id.

        Flushes first, so feedback on a just-recorded request finds its row. Database errors
        propagate (``SQLAlchemyError``).
        """
        self.flush()
        statement = (update(decisions).where(decisions.c.request_id == request_id)
                     .values(feedback=feedback))
        with self._db_lock, self._engine.begin() as conn:
            return conn.execute(statement).rowcount > 0

    def recover_spill(self) -> int:
        """Insert the spill file's rows; return how many are now in the database.

        Rows the database still refuses (a different record under an existing request_id) stay
        in the file, which otherwise ends up empty. Unreachable database: ``SQLAlchemyError``
        propagates and the file is left as it was.
        """
        if not self.spill_path.exists():
            return 0
        with open(self.spill_path, "r+b") as fh, self._file_lock(fh):
            lines = [line for line in fh.read().splitlines() if line.strip()]
            if not lines:
                return 0
            keep: list[bytes] = []
            parsed: list[tuple[bytes, dict[str, Any]]] = []
            for line in lines:
                try:
                    parsed.append((line, DecisionRecord.from_row(json.loads(line)).to_row()))
                except (ValueError, TypeError) as exc:
                    logger.error("decision log: unreadable spill line kept in %s: %s",
                                 self.spill_path, exc)
                    keep.append(line)
            recovered = 0
            try:
                if parsed:
                    self._insert([row for _, row in parsed])
                recovered = len(parsed)
            except SQLAlchemyError as exc:
                if not _is_row_error(exc):
                    raise
                for line, row in parsed:
                    # Non-row errors propagate; rows inserted so far are recognised next time.
                    if self._insert_or_reject(row) is None:
                        recovered += 1
                    else:
                        keep.append(line)
            fh.seek(0)
            fh.truncate()
            if keep:
                fh.write(b"".join(line + b"\n" for line in keep))
            fh.flush()
            os.fsync(fh.fileno())
        self._degraded = False
        self._recover_pending = False
        if recovered or keep:
            log = logger.warning if keep else logger.info
            log("decision log: recovered %d spilled record(s) from %s; %d kept there",
                recovered, self.spill_path, len(keep))
        return recovered

    # -- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            rows, flushes, stop = self._next_batch()
            if rows:
                try:
                    self._write(rows)
                except Exception:  # a bug here must not kill the only writer
                    logger.exception("decision log: writing %d record(s) failed", len(rows))
                    self._spill(rows, "unexpected writer error")
            for done in flushes:
                done.set()

    def _next_batch(self) -> tuple[list[dict[str, Any]], list[threading.Event], bool]:
        """(rows, flush markers reached, stop reached): blocks for the first item, then waits
        up to flush_interval_s for more rows; a flush or stop marker ends the batch at once."""
        limit = self._batch_size * (_DEGRADED_BATCH_FACTOR if self._degraded else 1)
        deadline = time.monotonic() + self._flush_interval_s
        rows: list[dict[str, Any]] = []
        item = self._queue.get()
        while True:
            if item is _STOP:
                return rows, [], True
            if isinstance(item, threading.Event):
                return rows, [item], False
            rows.append(item)
            if len(rows) >= limit:
                return rows, [], False
            remaining = deadline - time.monotonic()
            try:
                item = (self._queue.get(timeout=remaining) if remaining > 0
                        else self._queue.get_nowait())
            except queue.Empty:
                return rows, [], False

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, retrying database failures; spill what cannot be written."""
        tries = 1 if self._degraded else 1 + self._max_retries
        pending = rows
        error: SQLAlchemyError | None = None
        for attempt in range(tries):
            if attempt:
                time.sleep(BACKOFF_START_S * 2 ** (attempt - 1))
            try:
                self._insert(pending)
                break
            except SQLAlchemyError as exc:
                self._count_error()
                error = exc
                if not _is_row_error(exc):
                    logger.warning("decision log: writing %d record(s) failed (try %d of %d): %s",
                                   len(pending), attempt + 1, tries, brief_error(exc))
                    continue
            # A bad row fails the whole batch: write the others one by one, spill the bad ones.
            rejected, pending, error = self._insert_one_by_one(pending)
            if rejected:
                self._spill(rejected, "rejected by the database (duplicate request_id or bad "
                                      "value)")
            if not pending:
                break
        else:
            self._degraded = self._recover_pending = True
            self._spill(pending, f"database unavailable after {tries} tries: "
                                 f"{brief_error(error) if error else '?'}")
            return
        self._degraded = False
        if self._recover_pending:
            logger.info("decision log: database writable again; recovering the spill file")
            try:
                self.recover_spill()
            except Exception:
                logger.exception("decision log: recovering %s failed", self.spill_path)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._db_lock, self._engine.begin() as conn:
            conn.execute(decisions.insert(), rows)

    def _insert_one_by_one(self, rows: list[dict[str, Any]]
                           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                      SQLAlchemyError | None]:
        """(rows refused, rows not tried because the database failed, that failure)."""
        rejected: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            try:
                refusal = self._insert_or_reject(row)
            except SQLAlchemyError as exc:
                self._count_error()
                return rejected, rows[index:], exc
            if refusal is not None:
                logger.error("decision log: request %s refused: %s", row["request_id"],
                             brief_error(refusal))
                rejected.append(row)
        return rejected, [], None

    def _insert_or_reject(self, row: dict[str, Any]) -> SQLAlchemyError | None:
        """Insert one row: None when stored (or already stored, identical), else the refusal.

        Other database errors propagate.
        """
        try:
            self._insert([row])
        except SQLAlchemyError as exc:
            if not _is_row_error(exc):
                raise
            # A retried batch whose commit did land: the same record is already there.
            if isinstance(exc, IntegrityError) and self._already_stored(row):
                return None
            return exc
        return None

    def _already_stored(self, row: dict[str, Any]) -> bool:
        query = select(decisions).where(decisions.c.request_id == row["request_id"])
        with self._db_lock, self._engine.connect() as conn:
            stored = conn.execute(query).mappings().first()
        return stored is not None and DecisionRecord.from_row(stored) == \
            DecisionRecord.from_row(row)

    def _spill(self, rows: list[dict[str, Any]], reason: str) -> None:
        """Append ``rows`` to the spill file; never raises (last resort: the log itself)."""
        try:
            data = b"".join(_spill_line(row) for row in rows)
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spill_path, "a+b") as fh, self._file_lock(fh):
                # A line torn by a crash must not swallow the first row written now.
                size = fh.seek(0, os.SEEK_END)
                if size:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except Exception:
            logger.exception("decision log: could not spill %d record(s) to %s (%s); the "
                             "records follow:\n%s", len(rows), self.spill_path, reason,
                             "".join(_dumps(row) for row in rows))
            return
        logger.error("decision log: %d record(s) spilled to %s: %s", len(rows), self.spill_path,
                     reason)
        if self.metrics is not None:
            self.metrics.decision_log_spilled.inc(len(rows))

    def _count_error(self) -> None:
        if self.metrics is not None:
            self.metrics.decision_log_errors.inc()

    @staticmethod
    @contextlib.contextmanager
    def _file_lock(fh: Any) -> Iterator[None]:
        # flock: other processes logging to the same spill file (several workers) wait too.
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
