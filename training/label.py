"""label: harvested rows -> tier labels (the labellers themselves: training/labellers.py).

Reads ``data/pipeline/harvest/rows.parquet``; writes ``data/pipeline/label/labelled.parquet``
(every input row and column, plus ``label``, ``label_source``, ``labeller_version``,
``label_note`` and ``targets`` -- per tier, was its answer acceptable, what the per-tier success
heads train on: :func:`training.labellers.success_targets`) and ``metrics/label.json``.

Support-intent rows without outcomes (banking77, clinc150) always get the rule; every other row
goes to ``params.label.labeller`` (outcomes | judge). Rows left unlabelled (label null) stay in
the file with the reason in ``label_note``: the split stage drops them, the metrics count them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from typing import Any

import pandas as pd

from router.tiers import TIERS
from training.labellers import (
    INTENT_SOURCES,
    LABEL_COLUMNS,
    TARGETS_COLUMN,
    JudgeLabeller,
    LabelError,
    Labeller,
    RuleLabeller,
    build_labeller,
    has_outcomes,
    success_targets,
)
from training.params import LabelParams, ParamsError, load_params
from training.paths import HARVEST_ROWS, LABELLED, metrics_file

logger = logging.getLogger(__name__)

ROWS = HARVEST_ROWS
METRICS = metrics_file("label")
REQUIRED_COLUMNS = ("row_id", "source", "text", "outcomes", "scores")


def rule_mask(rows: pd.DataFrame) -> pd.Series:
    """True for the rows the intent rule labels: intent sources with no outcome or score."""
    return pd.Series([source in INTENT_SOURCES
                      and not has_outcomes(outcomes, scores, where=f"row {row_id}")
                      for row_id, source, outcomes, scores in zip(
                          rows["row_id"], rows["source"], rows["outcomes"], rows["scores"],
                          strict=True)], index=rows.index, dtype=bool)


def label_rows(rows: pd.DataFrame, params: LabelParams,
               labeller: Labeller | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Label ``rows`` (harvest columns, see training/__init__.py).

    ``labeller`` defaults to ``params.labeller`` built from ``params``. Returns (``rows`` with
    the four label columns appended, same index and order; metrics: see :func:`label_metrics`).
    Raises :class:`LabelError` on rows it cannot read.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise LabelError(f"rows lack column(s) {missing}; have {list(rows.columns)}")
    labeller = labeller or build_labeller(params.labeller, params)
    by_rule = rule_mask(rows)
    parts = [RuleLabeller(params.intent_rule_tier).label(rows[by_rule])]
    if (~by_rule).any():
        parts.append(labeller.label(rows[~by_rule]))
    labels = pd.concat([p for p in parts if len(p)] or parts).reindex(rows.index)
    labelled = pd.concat([rows.drop(columns=[c for c in (*LABEL_COLUMNS, TARGETS_COLUMN)
                                             if c in rows.columns]), labels], axis=1)
    labelled[TARGETS_COLUMN] = success_targets(labelled, params.score_pass)
    judge_stats = (labeller.stats.as_dict()
                   if isinstance(labeller, JudgeLabeller) and (~by_rule).any() else None)
    return labelled, label_metrics(labelled, labeller.name, judge_stats)


def _reason(note: Any) -> str:
    # Notes may carry details after a colon ("judge call failed: <error>"): group by the head.
    return str(note).split(":", 1)[0] if isinstance(note, str) and note else "no note"


def _target_counts(labelled: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per tier: rows whose answer was acceptable (1), not (0), or not recorded (null)."""
    counts = {tier: {"1": 0, "0": 0, "null": 0} for tier in TIERS}
    for cell in labelled.get(TARGETS_COLUMN, pd.Series([], dtype=object)):
        for tier, value in json.loads(cell).items():
            counts[tier]["null" if value is None else str(value)] += 1
    return counts


def label_metrics(labelled: pd.DataFrame, labeller: str,
                  judge: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics/label.json: ``rows``, ``labelled``, ``labeller``; ``by_label`` and
    ``by_label_source`` (labelled rows), ``by_source`` (source -> label -> rows, "null" for
    unlabelled), ``labeller_versions``; ``unlabelled`` {``total``, ``by_reason``}; ``judge``
    (the judge's :class:`~training.labellers.JudgeStats`) when the judge ran."""
    done = labelled[labelled["label"].notna()]
    undone = labelled[labelled["label"].isna()]
    by_source: dict[str, dict[str, int]] = {}
    for source, label in zip(labelled["source"], labelled["label"], strict=True):
        counts = by_source.setdefault(str(source), {})
        key = str(label) if pd.notna(label) else "null"
        counts[key] = counts.get(key, 0) + 1
    metrics: dict[str, Any] = {
        "rows": len(labelled),
        "labelled": len(done),
        "labeller": labeller,
        "by_label": dict(sorted(Counter(done["label"]).items())),
        "by_label_source": dict(sorted(Counter(done["label_source"]).items())),
        "by_source": dict(sorted(by_source.items())),
        "labeller_versions": dict(sorted(Counter(labelled["labeller_version"]).items())),
        "targets": _target_counts(labelled),
        "unlabelled": {"total": len(undone),
                       "by_reason": dict(sorted(Counter(map(_reason, undone["label_note"]))
                                                .items()))},
    }
    if judge is not None:
        metrics["judge"] = judge
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params().label
        rows = pd.read_parquet(ROWS)
        labelled, metrics = label_rows(rows, params)
    except (ParamsError, LabelError, OSError) as exc:
        logger.error("label: %s", exc)
        sys.exit(1)
    LABELLED.parent.mkdir(parents=True, exist_ok=True)
    labelled.to_parquet(LABELLED, index=False)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("label: %d of %d rows labelled (%s); unlabelled %s", metrics["labelled"],
                metrics["rows"], metrics["by_label"], metrics["unlabelled"]["by_reason"])


if __name__ == "__main__":
    main()
