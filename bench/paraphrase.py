"""Paraphrase benchmark of the semantic cache (DESIGN, Performance targets, "Semantic cache").

Method fixed by the issue: the TRAIN queries of an intent data set (Banking77, CLINC150) are stored
in the real cache (:class:`router.cache.embedded.EmbeddedCache`), each with its intent's canonical
answer as the response (in a real cache, entries with identical stored answers answer the same
question); TEST queries are looked up. A semantic hit is correct when the entry served has the
query's intent. Exact hits (a test query equal to a training one) count as hits.

Knobs are fitted on validation queries, never on test: by default a part carved out of the TRAIN
queries (stratified by intent; the cache then holds the rest of train), or the data set's own
validation split (``validation="split"``, CLINC150): for each candidate ``min_margin`` (0 = plain
cosine) and ``min_support`` (1 = off), the similarity threshold is the lowest whose validation
hits keep the false share within ``val_false_budget`` (0.5%); the pair with the most hits wins
(or, with no budget, the threshold giving ``val_hit_rate`` and the pair with the fewest false
hits). Plain cosine is fitted at the same validation hit rate. On test, the fitted
cache is compared with plain cosine in the same embedding space *at the same hit rate* (the
baseline's threshold set on test to match: its best case) and at its own validation-fitted
threshold. Intervals: 95% bootstrap over test queries.

Run: ``tier-router bench --workload paraphrase --out FILE.json`` (both data sets, the champion
classifier's shared encoder pass beside plain base-MiniLM cosine).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from router.cache import CacheKey, cache_key, create_cache
from router.cache.encoder import Encoder, SharedPassEncoder
from router.config import CacheConfig
from router.normalise import normalise
from workloads import load_workload

logger = logging.getLogger(__name__)

DATASETS = ("banking77", "clinc150")
# Candidate agreement margins (cosine units). Fine steps at the low end: a fine-tuned classifier's
# embedding space is compressed (its useful margins are ~0.02, MiniLM's ~0.15). Supports: how many
# nearest entries must agree on the answer (1 = off).
DEFAULT_MARGINS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.125, 0.15,
                   0.175, 0.2)
DEFAULT_SUPPORTS = (1, 2, 3, 4, 6, 8, 12, 16)
TENANT = "bench"
OOS = "oos"  # CLINC150's out-of-scope intent
EmbedInput = Literal["query", "request"]
Validation = Literal["carve", "split"]


@dataclass(frozen=True)
class Query:
    """One labelled query: its split in the source data, intent and text."""

    split: str
    intent: str
    text: str


def load_queries(dataset: str, *, include_oos: bool = True,
                 data_dir: Path | None = None) -> dict[str, list[Query]]:
    """``{"train": [...], "val": [...], "test": [...]}`` of ``dataset`` (banking77 or clinc150;
    Banking77 has no validation split, CLINC150 has one).

    CLINC150's out-of-scope queries (``oos_*`` splits) have no intent to match; with
    ``include_oos`` (as DESIGN measured) they join train and test, each OOS training query with
    an intent of its own (``oos:<n>``: its own answer) and every OOS test query with ``oos``, so
    that any hit on one is false.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    workload = load_workload(dataset, data_dir)
    out: dict[str, list[Query]] = {"train": [], "val": [], "test": []}
    for record in workload.records:
        split = record.id.split(".")[1]  # ids are "<dataset>.<split>.<index>"
        intent = record.category
        if include_oos and split in ("oos_train", "oos_val", "oos_test"):
            split = split.removeprefix("oos_")
            intent = f"{OOS}:{len(out[split])}" if split == "train" else OOS
        if split in out:
            out[split].append(Query(split, intent, record.turns[-1]))
    return out


def canonical_response(intent: str) -> dict[str, Any]:
    """The stored answer standing for an intent: one OpenAI chat completion per intent."""
    return {"id": f"bench-{intent}", "object": "chat.completion", "created": 0,
            "model": "bench",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant",
                                     "content": f"[canonical answer for intent {intent}]"}}]}


def _sample(rows: list[Query], limit: int | None, rng: np.random.Generator) -> list[Query]:
    if limit is None or limit >= len(rows):
        return rows
    keep = np.sort(rng.choice(len(rows), size=limit, replace=False))
    return [rows[i] for i in keep]


def _carve(rows: list[Query], fraction: float, rng: np.random.Generator
           ) -> tuple[list[Query], list[Query]]:
    """Split train rows into (cache, validation), ``fraction`` of each intent to validation."""
    by_intent: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        # Out-of-scope rows ("oos:<n>", one intent each) form one stratum together.
        by_intent.setdefault(row.intent.split(":")[0], []).append(index)
    held: set[int] = set()
    for indices in by_intent.values():
        count = round(fraction * len(indices))
        held.update(rng.choice(indices, size=count, replace=False).tolist())
    return ([r for i, r in enumerate(rows) if i not in held],
            [r for i, r in enumerate(rows) if i in held])


class _Embedder:
    """Encodes each distinct text once; ``memo`` (text -> (d,) vector) may outlive the call."""

    def __init__(self, encoder: Encoder, embed: EmbedInput, batch_size: int,
                 memo: MutableMapping[str, np.ndarray] | None) -> None:
        self.encoder = encoder
        self.embed = embed
        self.batch_size = batch_size
        self.memo = memo if memo is not None else {}

    def text(self, query: Query) -> str:
        # The shared pass sees what the classifier scores: the normalised request.
        return normalise(query.text) if self.embed == "request" else key_for(query).query

    def __call__(self, queries: Sequence[Query]) -> np.ndarray:
        """(n, d) unit vectors for ``queries``."""
        texts = [self.text(q) for q in queries]
        missing = sorted({t for t in texts if t not in self.memo})
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            for text, vector in zip(batch, self.encoder.encode(batch), strict=True):
                self.memo[text] = vector
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros(
            (0, self.encoder.dim), dtype=np.float32)


def key_for(query: Query) -> CacheKey:
    """The cache key of a bare single-turn request, as the service would build it."""
    return cache_key([{"role": "user", "content": query.text}], {}, "auto", TENANT)


def _fill(cache: Any, rows: Sequence[Query], vectors: np.ndarray) -> dict[str, str]:
    """Store ``rows`` in ``cache``; returns entry id -> intent."""
    keys = [key_for(row) for row in rows]
    ids = cache.store_many(keys, [canonical_response(r.intent) for r in rows],
                           ["simple"] * len(rows), vectors)
    return {entry_id: row.intent for entry_id, row in zip(ids, rows, strict=True)}


@dataclass
class _Looked:
    """Per query: cosine of the candidate (1.0 exact), its margin and support, whether its
    intent is right, and whether the real ``lookup`` hit."""

    similarity: np.ndarray
    margin: np.ndarray
    support: np.ndarray
    correct: np.ndarray
    exact: np.ndarray
    hit: np.ndarray


def _look_up(cache: Any, intents: Mapping[str, str], rows: Sequence[Query],
             vectors: np.ndarray) -> _Looked:
    n = len(rows)
    out = _Looked(np.full(n, -2.0), np.full(n, -2.0), np.zeros(n, int), np.zeros(n, bool),
                  np.zeros(n, bool), np.zeros(n, bool))
    for i, (row, vector) in enumerate(zip(rows, vectors, strict=True)):
        key = key_for(row)
        hit = cache.lookup(key, vector)
        out.hit[i] = hit is not None
        if hit is not None and hit.kind == "exact":
            out.similarity[i], out.margin[i], out.exact[i] = 1.0, 2.0, True
            out.support[i] = cache.neighbours
            out.correct[i] = intents[hit.entry_id] == row.intent
            continue
        match = cache.nearest(key, vector)
        if match is None:
            continue
        out.similarity[i], out.margin[i] = match.similarity, match.margin
        out.support[i] = match.support
        out.correct[i] = intents[match.entry_id] == row.intent
        if hit is not None and hit.entry_id != match.entry_id:
            raise AssertionError("lookup and nearest disagree on the candidate")
    return out


def _threshold_for(similarity: np.ndarray, eligible: np.ndarray, rate: float) -> float | None:
    """Highest cosine threshold whose hit rate (eligible and similarity >= it) reaches rate."""
    need = int(np.ceil(rate * len(similarity)))
    candidates = np.sort(similarity[eligible])[::-1]
    if need == 0 or len(candidates) < need:
        return None
    return float(candidates[need - 1])


def _false_share(hits: np.ndarray, correct: np.ndarray) -> float:
    count = int(hits.sum())
    return float((hits & ~correct).sum() / count) if count else 0.0


def fit_rule(looked: _Looked, *, hit_rate: float, margins: Sequence[float],
             supports: Sequence[int] = (1,)) -> dict[str, Any]:
    """The (threshold, min_margin, min_support) with the fewest false hits at ``hit_rate`` on
    validation.

    For each (margin, support) the threshold is the highest giving at least ``hit_rate``; pairs
    that cannot reach it are skipped. Ties keep the laxer pair (fewer ways to miss)."""
    candidates = []
    for support in supports:
        for margin in margins:
            eligible = (looked.margin >= margin) & (looked.support >= support)
            threshold = _threshold_for(looked.similarity, eligible, hit_rate)
            if threshold is None:
                continue
            hits = eligible & (looked.similarity >= threshold)
            candidates.append({"min_margin": float(margin), "min_support": int(support),
                               "similarity_threshold": threshold,
                               "hit_rate": float(hits.mean()),
                               "false_share": _false_share(hits, looked.correct)})
    if not candidates:
        raise ValueError(f"no margin in {list(margins)} and support in {list(supports)} "
                         f"reaches a {hit_rate:.0%} hit rate")
    return min(candidates, key=lambda c: (c["false_share"], c["min_support"], c["min_margin"]))


def fit_budget(looked: _Looked, *, max_false_share: float, margins: Sequence[float],
               supports: Sequence[int] = (1,)) -> dict[str, Any]:
    """The (threshold, min_margin, min_support) with the most hits on validation whose false
    share stays within ``max_false_share``.

    For each (margin, support) the eligible queries are taken in order of falling cosine; the
    threshold is the lowest one (at the end of a run of equal cosines) whose hits keep the
    false share within budget. Ties keep fewer false hits, then the laxer pair."""
    n = len(looked.similarity)
    candidates = []
    for support in supports:
        for margin in margins:
            eligible = np.flatnonzero((looked.margin >= margin) & (looked.support >= support))
            if not len(eligible):
                continue
            order = eligible[np.argsort(-looked.similarity[eligible], kind="stable")]
            similarity = looked.similarity[order]
            false = np.cumsum(~looked.correct[order])
            hits = np.arange(1, len(order) + 1)
            # Only cut where the next cosine is lower: a threshold takes all equal cosines.
            cut = np.append(similarity[1:] < similarity[:-1], True)
            ok = np.flatnonzero(cut & (false <= max_false_share * hits))
            if not len(ok):
                continue
            k = int(ok[-1])
            candidates.append({"min_margin": float(margin), "min_support": int(support),
                               "similarity_threshold": float(similarity[k]),
                               "hit_rate": float((k + 1) / n),
                               "false_share": float(false[k] / (k + 1))})
    if not candidates:
        raise ValueError(f"no margin in {list(margins)} and support in {list(supports)} keeps "
                         f"false hits within {max_false_share:.1%} of hits")
    return max(candidates, key=lambda c: (c["hit_rate"], -c["false_share"], -c["min_support"],
                                          -c["min_margin"]))


def _baseline_same_rate(similarity: np.ndarray, correct: np.ndarray, hits: int
                        ) -> tuple[float, float]:
    """Plain cosine's (threshold, false share) when it takes the ``hits`` most similar queries."""
    if hits == 0:
        return 1.0, 0.0
    order = np.argsort(-similarity, kind="stable")[:hits]
    return float(similarity[order[-1]]), float(1.0 - correct[order].mean())


def _at_rates(looked: _Looked, rates: Sequence[float], min_margin: float,
              min_support: int) -> list[dict[str, float]]:
    """Both curves at fixed test hit rates: the fitted agreement knobs with the threshold moved
    to reach each rate, and plain cosine at the same rate (each its best case on test)."""
    eligible = (looked.margin >= min_margin) & (looked.support >= min_support)
    out = []
    for rate in rates:
        threshold = _threshold_for(looked.similarity, eligible, rate)
        if threshold is None:
            continue
        hits = eligible & (looked.similarity >= threshold)
        base_threshold, base_share = _baseline_same_rate(looked.similarity, looked.correct,
                                                         int(hits.sum()))
        out.append({"hit_rate": float(hits.mean()), "similarity_threshold": threshold,
                    "false_share": _false_share(hits, looked.correct),
                    "baseline_similarity_threshold": base_threshold,
                    "baseline_false_share": base_share})
    return out


def _bootstrap(looked: _Looked, hits: np.ndarray, reps: int, rng: np.random.Generator
               ) -> dict[str, list[float]]:
    """95% intervals of the fitted rule's false share and of (baseline - fitted) at the same
    hit rate, resampling test queries."""
    n = len(hits)
    ours, diff = [], []
    for _ in range(reps):
        pick = rng.integers(0, n, n)
        h, c, s = hits[pick], looked.correct[pick], looked.similarity[pick]
        share = _false_share(h, c)
        ours.append(share)
        diff.append(_baseline_same_rate(s, c, int(h.sum()))[1] - share)
    return {"false_share_ci95": np.percentile(ours, [2.5, 97.5]).tolist(),
            "false_share_reduction_ci95": np.percentile(diff, [2.5, 97.5]).tolist()}


def paraphrase_benchmark(dataset: str, encoder: Encoder, *, embed: EmbedInput | None = None,
                         validation: Validation = "carve", val_fraction: float = 0.2,
                         val_false_budget: float | None = 0.005,
                         val_hit_rate: float = 0.32,
                         margins: Sequence[float] = DEFAULT_MARGINS,
                         supports: Sequence[int] = DEFAULT_SUPPORTS, neighbours: int = 32,
                         max_train: int | None = None, max_test: int | None = None,
                         include_oos: bool = True, seed: int = 0, bootstrap: int = 1000,
                         curve_rates: Sequence[float] = (0.30, 0.35),
                         memo: MutableMapping[str, np.ndarray] | None = None,
                         batch_size: int = 256, data_dir: Path | None = None,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit and measure the cache's semantic rule on ``dataset``; see the module docstring.

    ``encoder``: the embedding space; ``embed``: what it embeds, the bare last user turn
    (``query``, default for a stand-alone encoder) or the classifier's normalised request text
    (``request``, default for :class:`SharedPassEncoder`). ``validation``: ``carve`` holds out
    ``val_fraction`` of the train queries (the cache then holds the rest); ``split`` looks up the
    data set's own validation split in a cache of all train queries (CLINC150; Banking77 has
    none and carves). Test is never used for fitting. ``val_false_budget``: the knobs giving the
    most validation hits with at most this share of them false (half the stretch goal's 1%,
    leaving room for validation-to-test slippage); None fits for ``val_hit_rate`` instead (the
    fewest false hits at that validation hit rate). ``max_train``
    / ``max_test``: random row caps (None: all). ``include_oos``: CLINC150's out-of-scope queries
    join (see :func:`load_queries`). ``memo``: text -> vector, reused across calls.
    ``curve_rates``: test hit rates at which both rules are also compared with thresholds set on
    test (``test_curve``: a curve comparison, not a fitted operating point).
    Returns figures as plain JSON types: fitted knobs, test hit rate and false-hit share (with
    95% bootstrap intervals), plain cosine's false share at the same hit rate, counts, seconds.
    """
    say = progress or logger.info
    rng = np.random.default_rng(seed)
    embed = embed or ("request" if isinstance(encoder, SharedPassEncoder) else "query")
    started = time.perf_counter()
    data = load_queries(dataset, include_oos=include_oos, data_dir=data_dir)
    train = _sample(data["train"], max_train, rng)
    test = _sample(data["test"], max_test, rng)
    if validation == "split" and data["val"]:
        fit_rows, val_rows = train, _sample(data["val"], max_test, rng)
    else:
        validation = "carve"
        fit_rows, val_rows = _carve(train, val_fraction, rng)
    embedder = _Embedder(encoder, embed, batch_size, memo)
    say(f"{dataset}: encoding {len(train)} train + {len(test)} test queries ({encoder.name})")
    train_vectors = {id(row): v for row, v in zip(train, embedder(train), strict=True)}
    train_vectors.update((id(row), v) for row, v in zip(val_rows, embedder(val_rows),
                                                        strict=True))
    test_vectors = embedder(test)
    encoded = time.perf_counter()

    def build(rows: Sequence[Query], threshold: float, min_margin: float,
              min_support: int) -> tuple[Any, dict]:
        config = CacheConfig(similarity_threshold=min(1.0, max(0.0, threshold)),
                             min_margin=min_margin, min_support=min_support,
                             neighbours=neighbours, max_entries=max(1, len(rows)))
        cache = create_cache(config, encoder, path=None)
        return cache, _fill(cache, rows, np.stack([train_vectors[id(r)] for r in rows]))

    # Validation: margins are computed with the agreement window on, so that nearest() reports
    # them; the threshold is applied afterwards from the recorded cosines.
    cache, intents = build(fit_rows, 1.0, max(margins) or 1.0, 1)
    val = _look_up(cache, intents, val_rows, np.stack([train_vectors[id(r)] for r in val_rows]))
    fitted = (fit_budget(val, max_false_share=val_false_budget, margins=margins,
                         supports=supports) if val_false_budget is not None
              else fit_rule(val, hit_rate=val_hit_rate, margins=margins, supports=supports))
    plain = fit_rule(val, hit_rate=fitted["hit_rate"], margins=[0.0])
    say(f"{dataset}: fitted {fitted}; plain cosine {plain}")

    cache, intents = build(train, fitted["similarity_threshold"], fitted["min_margin"],
                           fitted["min_support"])
    looked = _look_up(cache, intents, test, test_vectors)
    hits = looked.hit
    base_threshold, base_share = _baseline_same_rate(looked.similarity, looked.correct,
                                                     int(hits.sum()))
    plain_hits = looked.similarity >= plain["similarity_threshold"]
    intervals = _bootstrap(looked, hits, bootstrap, rng) if bootstrap else {}
    return {
        "dataset": dataset,
        "encoder": encoder.name,
        "embed": embed,
        "rows": {"train": len(train), "cache_for_fit": len(fit_rows),
                 "validation": len(val_rows), "test": len(test),
                 "train_available": len(data["train"]), "test_available": len(data["test"]),
                 "include_oos": include_oos, "seed": seed, "validation_from": validation},
        "fitted": {**fitted, "neighbours": neighbours, "validation_rows": len(val_rows)},
        "test": {"hits": int(hits.sum()), "exact_hits": int((hits & looked.exact).sum()),
                 "hit_rate": float(hits.mean()),
                 "false_hits": int((hits & ~looked.correct).sum()),
                 "false_share": _false_share(hits, looked.correct), **intervals},
        "baseline_same_hit_rate": {"similarity_threshold": base_threshold,
                                   "false_share": base_share},
        "baseline_fitted": {"similarity_threshold": plain["similarity_threshold"],
                            "validation_hit_rate": plain["hit_rate"],
                            "validation_false_share": plain["false_share"],
                            "test_hit_rate": float(plain_hits.mean()),
                            "test_false_share": _false_share(plain_hits, looked.correct)},
        "test_curve": _at_rates(looked, curve_rates, fitted["min_margin"], fitted["min_support"]),
        "seconds": {"encode": encoded - started, "total": time.perf_counter() - started},
    }
