"""split: labelled rows -> train / validation / test folds, grouped, with boosted tails.

Reads ``data/pipeline/label/labelled.parquet``; rows without a label are dropped (counted).
Every row gets a ``group``: support intents (banking77, clinc150) group by intent
(``"<source>:<category>"``: same intent = paraphrase), every other row by MinHash cluster at
Jaccard >= ``group_threshold`` (id: the cluster's smallest ``row_id``). A group's fold follows
from a hash of ``"<seed>:<group>"`` alone, so reruns give the same split and no group straddles
folds. Groups with a row in a tail slice (``critical`` label, ``finance``/``legal``/``medical``
domain, ``rare`` category) land in the evaluation folds ``tail_eval_boost`` times more often;
``weight`` undoes that for weighted metrics.

Writes ``data/pipeline/split/{train,validation,test}.parquet`` (input columns + ``group``,
``fold``, ``slice``, ``weight``) and ``metrics/split.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from router.tiers import TIERS
from training.params import ParamsError, SplitParams, load_params
from training.paths import LABELLED, SPLIT_DIR, metrics_file
from training.textops import DOMAINS, connected_components, minhash_signatures, similar_pairs

logger = logging.getLogger(__name__)

LABELLED_PATH = LABELLED
METRICS_PATH = metrics_file("split")

FOLDS: tuple[str, ...] = ("train", "validation", "test")
SLICES: tuple[str, ...] = ("critical", *DOMAINS, "rare")
SPLIT_COLUMNS: tuple[str, ...] = ("group", "fold", "slice", "weight")
REQUIRED_COLUMNS: tuple[str, ...] = ("row_id", "source", "category", "text", "domain", "label",
                                     "label_source")
# Intent data sets (as training.labellers.INTENT_SOURCES): rows of one intent are paraphrases.
INTENT_SOURCES = frozenset({"banking77", "clinc150"})
# The boosted evaluation share of tail groups never exceeds this: train keeps some of every tail.
MAX_TAIL_EVAL_SHARE = 0.9
GROUP_PERMUTATIONS = 64  # MinHash signature length for the grouping

__all__ = [
    "FOLDS",
    "LABELLED_PATH",
    "METRICS_PATH",
    "SLICES",
    "SPLIT_DIR",
    "SplitError",
    "SplitResult",
    "assign_groups",
    "fold_probabilities",
    "group_position",
    "main",
    "row_slices",
    "split_rows",
    "write_outputs",
]


class SplitError(ValueError):
    """Input the stage cannot split (missing columns, duplicate row ids, bad fractions)."""


@dataclass(frozen=True)
class SplitResult:
    """``folds``: fold name -> its rows (input columns + :data:`SPLIT_COLUMNS`, input order, a
    fresh RangeIndex; every fold present, maybe empty). ``stats``: metrics/split.json."""

    folds: dict[str, pd.DataFrame]
    stats: dict[str, Any]


def fold_probabilities(params: SplitParams) -> dict[bool, dict[str, float]]:
    """``{is_tail: {fold: probability}}``: the chance that a group lands in each fold.

    Non-tail groups: the configured fractions. Tail groups: evaluation share p = validation +
    test raised to min(0.9, p * tail_eval_boost) (never lowered), shared between validation and
    test in the configured ratio.
    """
    evaluation = params.validation + params.test
    if evaluation >= 1.0:
        raise SplitError(f"split.validation + split.test = {evaluation:g} leaves no training "
                         "data (must be < 1)")
    tail_evaluation = max(evaluation, min(MAX_TAIL_EVAL_SHARE, evaluation * params.tail_eval_boost))
    return {
        is_tail: {"train": 1.0 - share,
                  "validation": share * params.validation / evaluation,
                  "test": share * params.test / evaluation}
        for is_tail, share in ((False, evaluation), (True, tail_evaluation))
    }


def group_position(seed: int, group: str) -> float:
    """A group's uniform position in [0, 1): the first 8 bytes of sha256("<seed>:<group>")."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _fold(position: float, probabilities: Mapping[str, float]) -> str:
    # [0, validation) -> validation, [validation, validation + test) -> test, rest -> train.
    if position < probabilities["validation"]:
        return "validation"
    if position < probabilities["validation"] + probabilities["test"]:
        return "test"
    return "train"


def assign_groups(rows: pd.DataFrame, threshold: float, seed: int,
                  num_perm: int = GROUP_PERMUTATIONS) -> pd.Series:
    """The ``group`` of every row (a str Series on ``rows.index``).

    ``rows``: ``row_id``, ``source``, ``category``, ``text``. Intent sources:
    ``"<source>:<category>"``; other rows: MinHash clusters (union-find over LSH pairs with
    estimated Jaccard >= ``threshold``, across sources), named by their smallest ``row_id``.
    """
    groups = pd.Series("", index=rows.index, dtype=object)
    intent = rows["source"].isin(INTENT_SOURCES)
    groups[intent] = rows.loc[intent, "source"] + ":" + rows.loc[intent, "category"].astype(str)
    others = rows[~intent]
    if len(others):
        signatures = minhash_signatures(others["text"].tolist(), num_perm, seed)
        component = connected_components(len(others), similar_pairs(signatures, threshold))
        names = others["row_id"].groupby(component).transform("min")
        groups[~intent] = names.to_numpy()
    return groups


def row_slices(rows: pd.DataFrame, rare_category_max: int) -> list[list[str]]:
    """Tail slices of every row (names in :data:`SLICES` order): ``critical`` (label),
    a domain, ``rare`` (its (source, category) has at most ``rare_category_max`` rows)."""
    size = rows.groupby(["source", "category"], dropna=False)["row_id"].transform("size")
    result = []
    for label, domain, count in zip(rows["label"], rows["domain"], size, strict=True):
        names = []
        if label == "critical":
            names.append("critical")
        if domain in DOMAINS:
            names.append(domain)
        if count <= rare_category_max:
            names.append("rare")
        result.append(names)
    return result


def _counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    return {str(key): int(n) for key, n in frame[column].value_counts(dropna=False)
            .sort_index().items()}


def split_rows(rows: pd.DataFrame, params: SplitParams) -> SplitResult:
    """The stage's core: labelled rows (harvest + label columns) -> :class:`SplitResult`.

    Raises :class:`SplitError` on missing columns, duplicate ``row_id``, unknown labels, a
    labelled row without text, or fractions that leave no training data.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise SplitError(f"labelled rows lack column(s) {missing}; have {list(rows.columns)}")
    probabilities = fold_probabilities(params)
    labelled = rows[rows["label"].notna()].reset_index(drop=True)
    dropped = len(rows) - len(labelled)
    unknown = sorted(set(labelled["label"]) - set(TIERS))
    if unknown:
        raise SplitError(f"labels {unknown} are not tiers {list(TIERS)}")
    duplicated = labelled["row_id"][labelled["row_id"].duplicated()]
    if len(duplicated):
        raise SplitError(f"duplicate row_id(s), e.g. {duplicated.iloc[0]!r}")
    if labelled["text"].isna().any():
        raise SplitError(f"row {labelled.loc[labelled['text'].isna(), 'row_id'].iloc[0]!r} "
                         "has a label but no text")
    out = labelled.drop(columns=[c for c in SPLIT_COLUMNS if c in labelled.columns])
    out["group"] = assign_groups(labelled, params.group_threshold, params.seed)
    slices = row_slices(labelled, params.rare_category_max)
    # A group is a tail group when any of its rows is in a tail slice.
    tail = pd.Series([bool(names) for names in slices]).groupby(out["group"]).transform("any")
    folds, weights = [], []
    for group, is_tail in zip(out["group"], tail, strict=True):
        fold = _fold(group_position(params.seed, group), probabilities[is_tail])
        folds.append(fold)
        # Inclusion rate relative to a non-tail group: weighted metrics undo the boost.
        weights.append(probabilities[False][fold] / probabilities[is_tail][fold])
    out["fold"] = folds
    out["slice"] = [json.dumps(names) for names in slices]
    out["weight"] = weights
    result = {fold: out[out["fold"] == fold].reset_index(drop=True) for fold in FOLDS}
    stats = {
        "rows": len(out),
        "dropped_unlabelled": dropped,
        "groups": int(out["group"].nunique()),
        "tail_groups": int(out.loc[tail.to_numpy(), "group"].nunique()),
        "fold_probabilities": {"tail" if is_tail else "other": {
            fold: round(value, 6) for fold, value in p.items()}
            for is_tail, p in probabilities.items()},
        "rows_by_fold": {fold: len(result[fold]) for fold in FOLDS},
        "weighted_rows_by_fold": {fold: round(float(result[fold]["weight"].sum()), 3)
                                  for fold in FOLDS},
        "rows_by_fold_label": {fold: _counts(result[fold], "label") for fold in FOLDS},
        "rows_by_fold_slice": {fold: dict(Counter(name for cell in result[fold]["slice"]
                                                  for name in json.loads(cell)))
                               for fold in FOLDS},
        "rows_by_fold_label_source": {fold: _counts(result[fold], "label_source")
                                      for fold in FOLDS},
    }
    logger.info("split: %d rows in %d groups (%d tail) -> %s; %d unlabelled dropped",
                len(out), stats["groups"], stats["tail_groups"], stats["rows_by_fold"], dropped)
    return SplitResult(result, stats)


def _output_schema(schema: pa.Schema) -> pa.Schema:
    """The input schema (all-null columns as strings) plus the split columns."""
    fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f
              for f in schema if f.name not in SPLIT_COLUMNS]
    return pa.schema([*fields, pa.field("group", pa.string()), pa.field("fold", pa.string()),
                      pa.field("slice", pa.string()), pa.field("weight", pa.float64())])


def write_outputs(result: SplitResult, schema: pa.Schema, split_dir: Path = SPLIT_DIR,
                  metrics_path: Path = METRICS_PATH) -> None:
    """One parquet file per fold (``schema``: the input's, see :func:`_output_schema`) and the
    metrics JSON."""
    split_dir.mkdir(parents=True, exist_ok=True)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    schema = _output_schema(schema)
    for fold, frame in result.folds.items():
        table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
        pq.write_table(table, split_dir / f"{fold}.parquet")
    metrics_path.write_text(json.dumps(result.stats, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    """The DVC stage: labelled.parquet -> split/{train,validation,test}.parquet, metrics."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params().split
        table = pq.read_table(LABELLED_PATH)
        result = split_rows(table.to_pandas(), params)
        write_outputs(result, table.schema)
    except (ParamsError, SplitError, OSError, pa.ArrowException) as exc:
        logger.error("split: %s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
