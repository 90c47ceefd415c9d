"""harvest: decision log (a time window) + seed workloads -> PII-scrubbed, deduplicated rows.

Reads the decision log (``params.harvest.log_url``, ``since <= created_at < until``); when it has
fewer than ``min_log_rows`` usable rows (status "ok", non-empty text), the seed workloads in
``bootstrap`` are added. Every text (and free-text feedback) is PII-scrubbed before anything is
written, then exact duplicates (same scrubbed text) and near duplicates (MinHash Jaccard >=
``near_dup_threshold``) are dropped, keeping the row with the most outcome information.

Writes ``data/pipeline/harvest/rows.parquet`` (the harvest columns of training/__init__.py),
``data/pipeline/harvest/quarantine.jsonl`` (rows that could not be used, with a reason; never
their text) and ``metrics/harvest.json``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from router.errors import RequestFormatError
from router.normalise import normalise
from router.pii import PII_KINDS, scrub_pii
from router.pricing import estimate_tokens
from router.telemetry import DecisionLog, DecisionRecord, decisions, hash_text
from router.tiers import TIERS
from training.params import HarvestParams, ParamsError, load_params
from training.paths import HARVEST_QUARANTINE, HARVEST_ROWS, metrics_file
from training.textops import DOMAINS, SUBJECT_DOMAINS, minhash_signatures, similar_pairs
from workloads import Outcome, Workload, WorkloadFormatError, WorkloadRecord, load_workload
from workloads.answers import record_answer

logger = logging.getLogger(__name__)

ROWS_PATH = HARVEST_ROWS
QUARANTINE_PATH = HARVEST_QUARANTINE
METRICS_PATH = metrics_file("harvest")

LOG_SOURCE = "log"
# The harvest columns, in order (training/__init__.py); every one is a string or null.
COLUMNS: tuple[str, ...] = ("row_id", "source", "category", "text", "text_hash", "domain",
                            "outcomes", "scores", "costs", "prompt_tokens", "output_tokens",
                            "created_at", "feedback")
SCHEMA = pa.schema([(column, pa.string()) for column in COLUMNS])

__all__ = [
    "COLUMNS",
    "METRICS_PATH",
    "QUARANTINE_PATH",
    "ROWS_PATH",
    "HarvestError",
    "HarvestResult",
    "harvest",
    "log_rows",
    "main",
    "parse_window",
    "read_log",
    "seed_rows",
    "write_outputs",
]


class HarvestError(ValueError):
    """A domain error of the stage (bad window, unreadable log, unknown seed workload)."""


@dataclass(frozen=True)
class HarvestResult:
    """What :func:`harvest` produces.

    ``rows``: one row per kept prompt, columns :data:`COLUMNS` (all str or None), log rows
    first, then seed rows in ``bootstrap`` order. ``quarantine``: one JSON-able object per
    unusable row (``row_id``, ``source``, ``reason``, ...; no text). ``stats``: the content of
    metrics/harvest.json.
    """

    rows: pd.DataFrame
    quarantine: list[dict[str, Any]]
    stats: dict[str, Any]


# --- reading ---------------------------------------------------------------------------------

def parse_window(params: HarvestParams) -> tuple[datetime, datetime]:
    """``(since, until)`` as timezone-aware datetimes; a string without offset is UTC."""
    bounds = []
    for name in ("since", "until"):
        value = getattr(params, name)
        try:
            bound = datetime.fromisoformat(value)
        except ValueError:
            raise HarvestError(f"harvest.{name}: not an ISO-8601 time: {value!r}") from None
        bounds.append(bound if bound.tzinfo is not None else bound.replace(tzinfo=UTC))
    since, until = bounds
    if since >= until:
        raise HarvestError(f"harvest window is empty: since {since.isoformat()} is not before "
                           f"until {until.isoformat()}")
    return since, until


def _missing_sqlite_file(url: str) -> Path | None:
    """The database file of a file-backed SQLite ``url`` when it does not exist, else None."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise HarvestError(f"harvest.log_url: not a database URL: {url!r} ({exc})") from None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or "mode=memory" in database:
        return None
    path = Path(database)
    return None if path.exists() else path


def read_log(url: str, since: datetime, until: datetime
             ) -> tuple[list[DecisionRecord], list[dict[str, Any]]]:
    """Decision records with ``since <= created_at < until``, oldest first, and quarantine
    entries for rows that could not even be read.

    A SQLite file that does not exist is an empty log (warned about, not created). A row the
    log cannot turn into a :class:`DecisionRecord` (corrupt JSON, an unparsable time) does not
    stop the stage: the window is then re-read row by row and such rows are quarantined.
    Raises :class:`HarvestError` when the database cannot be reached.
    """
    missing = _missing_sqlite_file(url)
    if missing is not None:
        logger.warning("decision log %s does not exist: treating the log as empty", missing)
        return [], []
    try:
        # A spill file of its own (never created): harvest must not replay the router's spill
        # file into the database it reads.
        with tempfile.TemporaryDirectory() as spill_dir, \
                DecisionLog(url, spill_path=Path(spill_dir) / "none.jsonl") as log:
            try:
                return log.read(since=since, until=until), []
            except (ValueError, TypeError) as exc:
                logger.warning("decision log: a row in the window is unreadable (%s); reading "
                               "row by row", exc)
    except SQLAlchemyError as exc:
        raise HarvestError(f"decision log {url}: {exc}") from None
    return _read_log_row_by_row(url, since, until)


def _read_log_row_by_row(url: str, since: datetime, until: datetime
                         ) -> tuple[list[DecisionRecord], list[dict[str, Any]]]:
    engine = create_engine(url)
    records: list[DecisionRecord] = []
    problems: list[dict[str, Any]] = []
    try:
        window = (decisions.c.created_at >= since) & (decisions.c.created_at < until)
        with engine.connect() as conn:
            keys = conn.execute(select(decisions.c.id, decisions.c.request_id).where(window)
                                .order_by(decisions.c.created_at, decisions.c.id)).all()
            for key, request_id in keys:
                try:
                    row = conn.execute(select(decisions).where(decisions.c.id == key)).mappings()
                    records.append(DecisionRecord.from_row(row.one()))
                except (ValueError, TypeError) as exc:
                    problems.append({"row_id": f"{LOG_SOURCE}:{request_id}",
                                     "source": LOG_SOURCE, "reason": "unreadable",
                                     "detail": f"{type(exc).__name__}: {exc}"[:300]})
    except SQLAlchemyError as exc:
        raise HarvestError(f"decision log {url}: {exc}") from None
    finally:
        engine.dispose()
    return records, problems


# --- rows ------------------------------------------------------------------------------------

def _json(mapping: Mapping[str, Any]) -> str:
    return json.dumps(mapping, ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> float | None:
    """A float that JSON can hold, else None (a NaN cost is no cost)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def log_rows(records: Sequence[DecisionRecord | Mapping[str, Any]], since: datetime,
             until: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Unscrubbed rows from decision records: (usable rows, quarantine entries, records in the
    window).

    Records outside ``since <= created_at < until`` are ignored. Usable: a non-empty
    ``request_id`` string, ``status == "ok"``, a non-blank ``text`` string. Rows carry the
    harvest columns except ``text_hash`` (computed after scrubbing).
    """
    rows: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    seen: set[str] = set()
    in_window = 0
    for record in records:
        created = _field(record, "created_at")
        if isinstance(created, datetime) and created.tzinfo is not None:
            if not since <= created < until:
                continue
            created_iso: str | None = created.astimezone(UTC).isoformat()
        else:
            created_iso = None
        in_window += 1
        request_id, status, text = (_field(record, name)
                                    for name in ("request_id", "status", "text"))
        row_id = f"{LOG_SOURCE}:{request_id}"
        if not isinstance(request_id, str) or not request_id:
            reason = "no request_id"
        elif created_iso is None:
            reason = "created_at not a timezone-aware time"
        elif status != "ok":
            reason = f"status {status}"
        elif text is None:
            reason = "no text"
        elif not isinstance(text, str):
            reason = f"text is {type(text).__name__}, not str"
        elif not text.strip():
            reason = "blank text"
        elif row_id in seen:
            reason = "duplicate request_id"
        else:
            reason = None
        if reason is not None:
            quarantine.append({"row_id": row_id if isinstance(request_id, str) else None,
                               "source": LOG_SOURCE, "reason": reason, "created_at": created_iso,
                               "status": status if isinstance(status, str) else None})
            continue
        seen.add(row_id)
        final_tier, cost = _field(record, "final_tier"), _finite(_field(record, "cost_usd"))
        prompt_tokens, completion = (_finite(_field(record, name))
                                     for name in ("prompt_tokens", "completion_tokens"))
        domain = _field(record, "override_domain")
        feedback = _field(record, "feedback")
        rows.append({
            "row_id": row_id, "source": LOG_SOURCE, "category": LOG_SOURCE, "text": text,
            "domain": domain if domain in DOMAINS else None,
            # The log knows what the answering tier cost, not whether any answer was right.
            "outcomes": _json(dict.fromkeys(TIERS)),
            "scores": _json(dict.fromkeys(TIERS)),
            "costs": _json({tier: cost if tier == final_tier else None for tier in TIERS}),
            "prompt_tokens": None if prompt_tokens is None else str(int(prompt_tokens)),
            "output_tokens": _json({tier: completion if tier == final_tier else None
                                    for tier in TIERS}),
            "created_at": created_iso,
            "feedback": feedback if isinstance(feedback, str) else None,
        })
    return rows, quarantine, in_window


def _sample(records: list[WorkloadRecord], name: str, cap: int | None,
            seed: int) -> list[WorkloadRecord]:
    """At most ``cap`` records, a seeded sample in the original order. The generator is seeded
    by ``seed`` and the source name, so capping one source leaves the others' samples alone."""
    if cap is None or cap >= len(records):
        return records
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    chosen = np.sort(rng.choice(len(records), size=cap, replace=False))
    return [records[i] for i in chosen]


def _tier_map(workload: Workload, record: WorkloadRecord,
              value: Callable[[Outcome], Any]) -> str:
    """JSON tier -> ``value`` of the tier's *own* recorded outcome: null where the data records
    none, and where the tier only aliases the next one up (RouteLLM's medium is GPT-4: its
    outcome is critical's, not a medium model's; harvest, the training replay and the bench all
    treat a medium choice there as the next tier up, at that tier's price and outcome)."""
    outcomes = {tier: workload.own_outcome(record, tier) for tier in TIERS}
    return _json({tier: (value(o) if o is not None else None) for tier, o in outcomes.items()})


def _output_tokens(workload: Workload, record: WorkloadRecord) -> str:
    """JSON tier -> estimated tokens of the answer the tier's own model gives (the recorded
    response, MMLU's synthetic letter, or the generic answer to an intent query; null for an
    alias): what the neighbourhood table learns each tier's expected output length from."""
    out: dict[str, float | None] = {}
    for tier in TIERS:
        model = workload.tier_models.get(tier) or tier
        if workload.tier_models and not workload.records_tier(tier):
            out[tier] = None
            continue
        text, _ = record_answer(record, workload.own_outcome(record, tier), model)
        out[tier] = estimate_tokens(len(text))
    return _json(out)


def seed_rows(workload: Workload, *, cap: int | None = None, seed: int = 13
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Unscrubbed rows of one seed workload (optionally a seeded sample of ``cap`` records):
    (rows, quarantine entries for records without a usable prompt)."""
    rows: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    for record in _sample(list(workload.records), workload.name, cap, seed):
        try:
            if not any(turn.strip() for turn in record.turns):
                raise RequestFormatError("blank prompt")
            text = normalise(record.messages())
        except RequestFormatError as exc:
            quarantine.append({"row_id": record.id, "source": record.source,
                               "reason": f"prompt: {exc}"})
            continue
        rows.append({
            "row_id": record.id, "source": record.source, "category": record.category,
            "text": text, "domain": SUBJECT_DOMAINS.get(record.category),
            "outcomes": _tier_map(workload, record, lambda o: o.correct),
            "scores": _tier_map(workload, record, lambda o: _finite(o.score)),
            "costs": _tier_map(workload, record, lambda o: _finite(o.cost_usd)),
            "prompt_tokens": str(int(estimate_tokens(sum(len(t) for t in record.turns)))),
            "output_tokens": _output_tokens(workload, record),
            "created_at": None, "feedback": None,
        })
    return rows, quarantine


# --- dedupe ----------------------------------------------------------------------------------

def _information(row: Mapping[str, Any]) -> int:
    """How much a row records about the tiers: its non-null outcomes and scores."""
    return sum(value is not None for column in ("outcomes", "scores")
               for value in json.loads(row[column]).values())


def _dedupe(rows: list[dict[str, Any]], threshold: float, num_perm: int,
            seed: int) -> tuple[list[dict[str, Any]], int, int]:
    """(kept rows in input order, exact duplicates dropped, near duplicates dropped).

    Among duplicates the row with the most outcome information survives; ties go to log rows
    (real traffic), then to the earlier row.
    """
    order = sorted(range(len(rows)), key=lambda i: (-_information(rows[i]),
                                                     rows[i]["source"] != LOG_SOURCE, i))
    kept: list[int] = []
    hashes: set[str] = set()
    for i in order:
        if rows[i]["text_hash"] not in hashes:
            hashes.add(rows[i]["text_hash"])
            kept.append(i)
    exact = len(rows) - len(kept)
    signatures = minhash_signatures([rows[i]["text"] for i in kept], num_perm, seed)
    pairs = similar_pairs(signatures, threshold)  # (i, j), i < j: i has priority
    dropped = np.zeros(len(kept), dtype=bool)
    # By j, so that every i < j has its final verdict: a row is dropped only by a kept row.
    for i, j in pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))].tolist():
        if not dropped[i]:
            dropped[j] = True
    survivors = sorted(k for k, drop in zip(kept, dropped, strict=True) if not drop)
    return [rows[i] for i in survivors], exact, int(dropped.sum())


# --- the stage -------------------------------------------------------------------------------

def harvest(log_records: Sequence[DecisionRecord | Mapping[str, Any]], params: HarvestParams,
            *, load: Callable[[str], Workload] = load_workload,
            log_problems: Sequence[dict[str, Any]] = ()) -> HarvestResult:
    """The stage's core: decision records (already read) -> :class:`HarvestResult`.

    ``log_records``: DecisionRecords (or row mappings) of the log; those outside the params'
    window are ignored. ``load``: seed workload by name, called only when bootstrapping.
    ``log_problems``: quarantine entries of rows the reader could not parse (counted as log
    rows). Raises :class:`HarvestError` on bad params and what ``load`` raises.
    """
    started = time.monotonic()
    since, until = parse_window(params)
    rows, quarantine, in_window = log_rows(log_records, since, until)
    quarantine = [*log_problems, *quarantine]
    usable = len(rows)
    bootstrapped = usable < params.min_log_rows
    if bootstrapped:
        logger.info("%d usable log rows < min_log_rows %d: bootstrapping from %s", usable,
                    params.min_log_rows, ", ".join(params.bootstrap))
        for name in params.bootstrap:
            cap = params.max_rows_per_source.get(name)
            if cap is not None and cap < 0:
                raise HarvestError(f"harvest.max_rows_per_source.{name}: negative cap {cap}")
            seeds, rejected = seed_rows(load(name), cap=cap, seed=params.seed)
            rows.extend(seeds)
            quarantine.extend(rejected)
    # Scrub before anything else sees the text: hashes, dedupe and outputs use scrubbed text.
    pii: Counter[str] = Counter()
    for row in rows:
        row["text"], found = scrub_pii(row["text"])
        pii.update(found)
        if row["feedback"] is not None:
            row["feedback"], found = scrub_pii(row["feedback"])
            pii.update(found)
        row["text_hash"] = hash_text(row["text"])
    # A row id must be unique (two seed files with clashing ids): the later one goes.
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["row_id"] in unique:
            quarantine.append({"row_id": row["row_id"], "source": row["source"],
                               "reason": "duplicate row_id"})
        else:
            unique[row["row_id"]] = row
    kept, exact, near = _dedupe(list(unique.values()), params.near_dup_threshold,
                                params.minhash_permutations, params.seed)
    frame = pd.DataFrame(kept, columns=list(COLUMNS))
    frame = frame.astype(object).where(frame.notna(), None)
    stats = {
        "log_rows": in_window + len(log_problems),
        "log_usable": usable,
        "bootstrapped": bootstrapped,
        "rows_by_source": dict(Counter(frame["source"])),
        "exact_duplicates": exact,
        "near_duplicates": near,
        "quarantined": len(quarantine),
        "pii_replacements": {kind: pii.get(kind, 0) for kind in PII_KINDS},
        "rows": len(frame),
    }
    logger.info("harvest: %d rows (%s); %d exact + %d near duplicates dropped; %d quarantined; "
                "PII %s; %.1f s", len(frame), stats["rows_by_source"], exact, near,
                len(quarantine), stats["pii_replacements"], time.monotonic() - started)
    return HarvestResult(frame, quarantine, stats)


def write_outputs(result: HarvestResult, rows_path: Path = ROWS_PATH,
                  quarantine_path: Path = QUARANTINE_PATH,
                  metrics_path: Path = METRICS_PATH) -> None:
    """Write rows (parquet, :data:`SCHEMA`), quarantine (JSON lines) and metrics (JSON)."""
    for path in (rows_path, quarantine_path, metrics_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(result.rows.to_dict("records"), schema=SCHEMA)
    pq.write_table(table, rows_path)
    quarantine_path.write_text(
        "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in result.quarantine),
        encoding="utf-8")
    metrics_path.write_text(json.dumps(result.stats, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    """The DVC stage: params.yaml's ``harvest`` section -> rows, quarantine, metrics."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params().harvest
        since, until = parse_window(params)
        records, problems = read_log(params.log_url, since, until)
        result = harvest(records, params, log_problems=problems)
        write_outputs(result)
    except (ParamsError, HarvestError, WorkloadFormatError, OSError) as exc:
        logger.error("harvest: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
