"""The neighbourhood prior: per-cluster success tables over the classifier's embedding space.

Training clusters the train fold's request embeddings (k-means, k chosen on validation) and
stores, per cluster, how many rows it holds and, per tier, how many of them record that tier's
outcome, the share that was right, and the tier's mean output tokens. At serve time a request
falls in its nearest cluster (cosine: rows and centroids are unit vectors), and the table gives

* a prior P(tier right) per tier, shrunk towards the global rate by ``shrinkage`` pseudo-rows
  (a 5-row cluster says little): ``(right * recorded + m * global) / (recorded + m)``;
* which tiers have evidence at all (``recorded >= min_recorded``): the rule does not choose a
  tier never observed on requests like this one (RouteLLM's MMLU rows record no medium model, so
  a medium head there would be extrapolating);
* the expected output tokens per tier, for the expected price (:mod:`router.pricing`);
* what the response scorer's check does on requests like this one, at each of several score
  thresholds (:class:`router.gate.CheckStats`): per tier, the share of its right answers and of
  its wrong answers that pass, and how often each tier above is right when it was right or
  wrong -- what the decision needs to weigh "call this tier and check it" against routing.
  A cluster holding fewer than ``min_recorded`` answers of the kinds the scorer was trained
  on, or where they are not at least half its rows, is not *checkable*: a scorer trained on
  RouterBench and GSM8K answers must not fail a support answer or a multiple-choice letter
  merely for lying outside what it learned;
* the explanation carried by the response and the decision record ("requests like this: simple
  right 93% of 1,204").

File ``neighbourhood.npz`` (no pickles): ``centroids`` (k, d) float32, ``rows`` (k,),
``recorded`` (k, 3), ``right`` (k, 3) (share right among recorded), ``output_tokens`` (k, 3),
``global_right`` (3,), ``global_output_tokens`` (3,), ``shrinkage`` and ``min_recorded``; and the
check statistics: ``check_thresholds`` (T,) (absent or empty without), per cluster
``right_rows`` / ``wrong_rows`` (k, 3) checkable answers right / wrong, ``tpr`` / ``fpr``
(T, k, 3) shares of them passing at each threshold, ``both_rows`` (k, 3, 3) rows recording tiers
s and e, ``right_when_right`` / ``right_when_wrong`` (k, 3, 3) tier e's share right when s was
right / wrong; and the pooled ``global_tpr``, ``global_fpr`` (T, 3), ``global_right_when_right``,
``global_right_when_wrong`` (3, 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import RouterError
from router.gate import CheckStats
from router.tiers import TIERS

NEIGHBOURHOOD_FILE = "neighbourhood.npz"
# Share of a cluster's rows that must be scorer-checked answers for its check rates to apply.
CHECKED_SHARE = 0.5
K = len(TIERS)
_BASE = ("centroids", "rows", "recorded", "right", "output_tokens", "global_right",
         "global_output_tokens", "shrinkage", "min_recorded")
_CHECKS = ("right_rows", "wrong_rows", "tpr", "fpr", "both_rows", "right_when_right",
           "right_when_wrong", "global_tpr", "global_fpr", "global_right_when_right",
           "global_right_when_wrong")
_ARRAYS = (*_BASE, "check_thresholds", *_CHECKS)


class NeighbourhoodError(RouterError):
    """A neighbourhood table that cannot be read or does not fit the embeddings."""


def _shrunk(rate: np.ndarray, rows: np.ndarray, pooled: np.ndarray, m: float) -> np.ndarray:
    return (np.nan_to_num(rate) * rows + m * pooled) / (rows + m)


@dataclass(frozen=True)
class Lookup:
    """The table's answer for n requests."""

    cluster: np.ndarray  # (n,) int
    prior: np.ndarray  # (n, 3) shrunk P(tier right)
    allowed: np.ndarray  # (n, 3) bool: tiers with evidence in the cluster
    output_tokens: np.ndarray  # (n, 3) expected output tokens
    check: CheckStats | None  # what the scorer's check does here (None: no statistics)

    @property
    def checkable(self) -> np.ndarray:
        return (np.zeros(len(self.cluster), dtype=bool) if self.check is None
                else self.check.checkable)

    def explain(self, table: NeighbourhoodTable, i: int) -> dict[str, Any]:
        """Request ``i``'s neighbourhood as JSON: ``{"cluster", "rows", "tiers": {tier:
        {"recorded", "right"}}, "checkable"}`` (``right`` the raw share, null when nothing is
        recorded)."""
        c = int(self.cluster[i])
        tiers = {}
        for j, tier in enumerate(TIERS):
            recorded = int(table.recorded[c, j])
            tiers[tier] = {"recorded": recorded,
                           "right": round(float(table.right[c, j]), 4) if recorded else None}
        return {"cluster": c, "rows": int(table.rows[c]), "tiers": tiers,
                "checkable": bool(self.checkable[i])}


@dataclass(frozen=True)
class NeighbourhoodTable:
    centroids: np.ndarray
    rows: np.ndarray
    recorded: np.ndarray
    right: np.ndarray
    output_tokens: np.ndarray
    global_right: np.ndarray
    global_output_tokens: np.ndarray
    shrinkage: float
    min_recorded: int
    check_thresholds: np.ndarray | None = None
    right_rows: np.ndarray | None = None
    wrong_rows: np.ndarray | None = None
    tpr: np.ndarray | None = None
    fpr: np.ndarray | None = None
    both_rows: np.ndarray | None = None
    right_when_right: np.ndarray | None = None
    right_when_wrong: np.ndarray | None = None
    global_tpr: np.ndarray | None = None
    global_fpr: np.ndarray | None = None
    global_right_when_right: np.ndarray | None = None
    global_right_when_wrong: np.ndarray | None = None

    def __post_init__(self) -> None:
        k = len(self.centroids)
        shapes = {"rows": (k,), "recorded": (k, K), "right": (k, K), "output_tokens": (k, K),
                  "global_right": (K,), "global_output_tokens": (K,)}
        if self.has_checks:
            t = len(self.check_thresholds)  # type: ignore[arg-type]
            shapes.update({name: (k, K) for name in ("right_rows", "wrong_rows")})
            shapes.update({name: (t, k, K) for name in ("tpr", "fpr")})
            shapes.update({name: (k, K, K) for name in ("both_rows", "right_when_right",
                                                        "right_when_wrong")})
            shapes.update({"global_tpr": (t, K), "global_fpr": (t, K),
                           "global_right_when_right": (K, K),
                           "global_right_when_wrong": (K, K)})
        bad = [f"{name} {np.shape(getattr(self, name))} != {shape}"
               for name, shape in shapes.items() if np.shape(getattr(self, name)) != shape]
        if self.centroids.ndim != 2 or k == 0 or bad:
            raise NeighbourhoodError(f"neighbourhood table shapes do not fit: {bad or 'no rows'}")

    @property
    def has_checks(self) -> bool:
        return self.check_thresholds is not None and len(self.check_thresholds) > 0

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def __len__(self) -> int:
        return len(self.centroids)

    def lookup(self, embeddings: np.ndarray) -> Lookup:
        """``embeddings`` (n, d) unit rows -> the nearest cluster's prior, evidence, tokens and
        check statistics (each shrunk to the pooled value by ``shrinkage`` pseudo-rows)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise NeighbourhoodError(f"embeddings of shape {embeddings.shape} do not fit "
                                     f"centroids of width {self.dim}")
        cluster = np.argmax(embeddings @ self.centroids.T, axis=1)
        m = self.shrinkage
        recorded = self.recorded[cluster]
        prior = _shrunk(self.right[cluster], recorded, self.global_right, m)
        check = None
        if self.has_checks:
            c = cluster
            right_rows, wrong_rows = self.right_rows[c], self.wrong_rows[c]  # type: ignore
            both = self.both_rows[c]  # type: ignore[index]
            # per-tier right / wrong answers among the recorded pairs (s right: b, s wrong: a)
            # How often tier e is right after s was right / wrong: shrunk towards the
            # cluster's own rate for e (pooled over every workload, the global conditional
            # rates mix in workloads where the frontier fixes far fewer cheap misses).
            towards = prior[:, None, :]
            tpr = self.tpr[:, c].transpose(1, 0, 2)  # type: ignore[index]  # (n, T, 3)
            fpr = self.fpr[:, c].transpose(1, 0, 2)  # type: ignore[index]
            check = CheckStats(
                np.asarray(self.check_thresholds, dtype=float),
                _shrunk(tpr, right_rows[:, None, :], self.global_tpr[None], m),  # type: ignore
                _shrunk(fpr, wrong_rows[:, None, :], self.global_fpr[None], m),  # type: ignore
                _shrunk(self.right_when_right[c], both, towards, m),  # type: ignore[index]
                _shrunk(self.right_when_wrong[c], both, towards, m),  # type: ignore[index]
                self._checkable(c))
        return Lookup(cluster, prior, recorded >= self.min_recorded,
                      self.output_tokens[cluster], check)

    def save(self, path: Path) -> None:
        values = {name: getattr(self, name) for name in _ARRAYS}
        np.savez(path, **{name: np.asarray(value) for name, value in values.items()
                          if value is not None})

    @classmethod
    def load(cls, path: Path) -> NeighbourhoodTable:
        try:
            with np.load(path, allow_pickle=False) as data:
                values = {name: data[name] for name in _ARRAYS if name in data}
        except (OSError, KeyError, ValueError) as exc:
            raise NeighbourhoodError(f"{path}: not a neighbourhood table: {exc}") from exc
        missing = [name for name in _BASE if name not in values]
        if missing:
            raise NeighbourhoodError(f"{path}: not a neighbourhood table (lacks {missing})")
        checks: dict[str, Any] = {}
        thresholds = values.get("check_thresholds")
        if thresholds is not None and len(thresholds):
            absent = [name for name in _CHECKS if name not in values]
            if absent:
                raise NeighbourhoodError(f"{path}: check statistics lack {absent}")
            checks = {name: values[name].astype(float) for name in _CHECKS}
            checks["check_thresholds"] = thresholds.astype(float)
        return cls(centroids=values["centroids"].astype(np.float32),
                   rows=values["rows"].astype(int), recorded=values["recorded"].astype(int),
                   right=values["right"].astype(float),
                   output_tokens=values["output_tokens"].astype(float),
                   global_right=values["global_right"].astype(float),
                   global_output_tokens=values["global_output_tokens"].astype(float),
                   shrinkage=float(values["shrinkage"]),
                   min_recorded=int(values["min_recorded"]), **checks)

    def _checkable(self, clusters: np.ndarray) -> np.ndarray:
        """(n,) bool: the clusters hold at least ``min_recorded`` answers of the kinds the
        scorer trained on *and* those are at least half the cluster's rows. A cluster of 200
        support queries and 12 stray RouterBench prompts is support traffic: the check's rates
        there describe the 12, not what a support answer would get."""
        checked = (self.right_rows + self.wrong_rows).max(axis=1)[clusters]  # type: ignore
        return (checked >= self.min_recorded) & (checked >= CHECKED_SHARE * self.rows[clusters])

    def clusters_of(self, embeddings: np.ndarray) -> np.ndarray:
        """The cluster of each embedding row (what :meth:`lookup` uses)."""
        return np.argmax(np.asarray(embeddings, dtype=np.float32) @ self.centroids.T, axis=1)

    def with_checks(self, clusters: np.ndarray, scores: np.ndarray, correct: np.ndarray,
                    thresholds: Sequence[float], checked: np.ndarray) -> NeighbourhoodTable:
        """This table with check statistics at each of ``thresholds`` from rows in ``clusters``
        (n,):
        ``scores`` (n, 3) the scorer's score of each tier's answer (NaN: none), ``correct``
        (n, 3) (NaN: unrecorded), ``checked`` (n,) rows of the kinds of answers the scorer was
        trained on (only they count for the check's rates: elsewhere it does not apply)."""
        k = len(self)
        scored = np.isfinite(scores) & np.isfinite(correct) & checked[:, None]
        right = np.nan_to_num(correct) > 0.5
        known = np.isfinite(correct)
        r_all, w_all = scored & right, scored & ~right
        passes = [np.nan_to_num(scores) >= t for t in thresholds]

        def share(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
            return np.where(bottom > 0, top / np.maximum(bottom, 1), 0.0)

        def conditionals(member: np.ndarray) -> tuple[np.ndarray, ...]:
            both = known[member][:, :, None] & known[member][:, None, :]  # (m, s, e)
            e_right = right[member][:, None, :]
            s_right = right[member][:, :, None]
            return (both.sum(0), share((both & s_right & e_right).sum(0),
                                       (both & s_right).sum(0)),
                    share((both & ~s_right & e_right).sum(0), (both & ~s_right).sum(0)))

        right_rows = np.zeros((k, K), dtype=int)
        wrong_rows = np.zeros((k, K), dtype=int)
        tpr = np.zeros((len(thresholds), k, K))
        fpr = np.zeros((len(thresholds), k, K))
        both_rows = np.zeros((k, K, K), dtype=int)
        when_right = np.zeros((k, K, K))
        when_wrong = np.zeros((k, K, K))
        for c in range(k):
            member = clusters == c
            right_rows[c], wrong_rows[c] = r_all[member].sum(0), w_all[member].sum(0)
            for i, passed in enumerate(passes):
                tpr[i, c] = share((r_all & passed)[member].sum(0), right_rows[c])
                fpr[i, c] = share((w_all & passed)[member].sum(0), wrong_rows[c])
            both_rows[c], when_right[c], when_wrong[c] = conditionals(member)
        _, global_right, global_wrong = conditionals(np.ones(len(clusters), dtype=bool))
        return replace(
            self, check_thresholds=np.asarray(thresholds, dtype=float), right_rows=right_rows,
            wrong_rows=wrong_rows, tpr=tpr, fpr=fpr, both_rows=both_rows,
            right_when_right=when_right, right_when_wrong=when_wrong,
            global_tpr=np.array([share((r_all & p).sum(0), r_all.sum(0)) for p in passes]),
            global_fpr=np.array([share((w_all & p).sum(0), w_all.sum(0)) for p in passes]),
            global_right_when_right=global_right, global_right_when_wrong=global_wrong)


def fit_table(embeddings: np.ndarray, correct: np.ndarray, output_tokens: np.ndarray, k: int,
              *, shrinkage: float, min_recorded: int, seed: int,
              weights: np.ndarray | None = None) -> NeighbourhoodTable:
    """Cluster ``embeddings`` (n, d) into ``k`` groups and tabulate ``correct`` (n, 3: 1/0/NaN
    for unrecorded) and ``output_tokens`` (n, 3, NaN unknown) per cluster. ``weights`` (n,):
    row weights for the rates (rows labelled by a rule may count less). Check statistics are
    added with :meth:`NeighbourhoodTable.with_checks`. Training-side, but here beside the reader
    so the format has one home; needs scikit-learn."""
    from sklearn.cluster import KMeans

    embeddings = np.asarray(embeddings, dtype=np.float32)
    k = max(1, min(k, len(embeddings)))
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(embeddings)
    centroids = km.cluster_centers_.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    labels = np.argmax(embeddings @ centroids.T, axis=1)  # the serve-time (cosine) assignment
    weights = np.ones(len(embeddings)) if weights is None else np.asarray(weights, dtype=float)
    known = np.isfinite(correct)
    w_known = known * weights[:, None]
    global_right = (np.where(known, correct, 0.0) * w_known).sum(0) / np.maximum(
        w_known.sum(0), 1e-12)
    tokens_known = np.isfinite(output_tokens)
    global_tokens = np.array([np.nanmean(output_tokens[:, j]) if tokens_known[:, j].any()
                              else 0.0 for j in range(K)])
    rows = np.bincount(labels, minlength=k)
    recorded = np.zeros((k, K), dtype=int)
    right = np.zeros((k, K))
    tokens = np.tile(global_tokens, (k, 1))
    for c in range(k):
        member = labels == c
        recorded[c] = known[member].sum(0)
        w = w_known[member]
        right[c] = np.where(w.sum(0) > 0, (np.where(known[member], correct[member], 0.0)
                                           * w).sum(0) / np.maximum(w.sum(0), 1e-12), 0.0)
        seen = tokens_known[member]
        # Output tokens shrunk towards the tier's global mean by 5 pseudo-rows.
        tokens[c] = (np.where(seen, output_tokens[member], 0.0).sum(0) + 5 * global_tokens) \
            / (seen.sum(0) + 5)
    return NeighbourhoodTable(centroids, rows, recorded, right, tokens, global_right,
                              global_tokens, float(shrinkage), int(min_recorded))
