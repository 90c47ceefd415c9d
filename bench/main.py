"""Run one outcome workload through the benchmark: rows, simulator, models, report, plots.

The ``tier-router bench`` command calls :func:`run_outcome_bench`; this module does the I/O and
:mod:`bench.run` the arithmetic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.approaches import Observations, ObservationsError
from bench.observe import BenchError, observe, tier_map
from bench.run import (
    BenchSettings,
    CategoryRules,
    evaluate,
    fit_category_rules,
    training_table,
)
from router.config import RouterConfig
from router.tiers import TIERS
from workloads import Workload, WorkloadRecord

if TYPE_CHECKING:  # the request path is imported where a bench runs (it is heavy)
    from router.classifier import TierClassifier
    from router.policy import RouterPolicy
    from router.scorer import ResponseScorer

logger = logging.getLogger(__name__)

DEFAULT_TEST_FOLD = Path("data/pipeline/split/test.parquet")
VALIDATION_FOLD = "validation.parquet"  # beside the test fold
MIXED_ROWS = 1000  # rows of the mixed workload unless --limit says otherwise


@dataclass(frozen=True)
class Rows:
    """The rows a bench reports on and those its per-category rule may be fitted on."""

    test: list[WorkloadRecord]
    train: list[WorkloadRecord]
    source: str  # how the test rows were chosen
    validation: list[WorkloadRecord] = field(default_factory=list)  # where curves keep settings


def select_rows(workload: Workload, builtin: bool, fold_file: Path | None, limit: int | None,
                seed: int) -> Rows:
    """Built-in workload: its rows in the test fold (else all rows, said so). PATH: all rows."""
    records = [r for r in workload.records if r.outcomes]
    if not records:
        raise BenchError(f"{workload.name}: no rows with recorded outcomes to benchmark")
    test_ids: set[str] | None = None
    validation_ids: set[str] = set()
    if builtin and fold_file is not None and fold_file.exists():

        test_ids = _fold_ids(fold_file, workload.name)
        validation_file = fold_file.with_name(VALIDATION_FOLD)
        if validation_file.exists():
            validation_ids = _fold_ids(validation_file, workload.name)
    if test_ids:
        test = [r for r in records if r.id in test_ids]
        train = [r for r in records if r.id not in test_ids and r.id not in validation_ids]
        source = f"test fold ({fold_file})"
    else:
        test, train, source = records, [], "all rows (per-category rule cross-fitted)"
    validation = [r for r in records if r.id in validation_ids]
    if limit is not None and limit < len(test):
        keep = set(random.Random(seed).sample(range(len(test)), limit))
        test = [r for i, r in enumerate(test) if i in keep]
        source += f", {limit} drawn with seed {seed}"
    return Rows(test, train, source, validation)


def _fold_ids(path: Path, source: str) -> set[str]:
    import pandas as pd

    fold = pd.read_parquet(path, columns=["row_id", "source"])
    return set(fold.loc[fold["source"] == source, "row_id"])


def _category_rules(workload: Workload, rows: Rows, config: RouterConfig, mapping: np.ndarray,
                    tiers: list[int]) -> tuple[CategoryRules, list[str]]:
    """The per-category rules and the key each test row looks its tier up by.

    Fitted on the training rows; with none (a PATH), two-fold cross-fitting: each half of the
    test rows is routed by the rule fitted on the other half, so the rules are keyed by row id.
    """
    def fit(records: list[WorkloadRecord]) -> CategoryRules:
        correct, cost = training_table(workload, records, config, mapping)
        return fit_category_rules([r.category for r in records], correct, cost, tiers)

    if rows.train:
        return fit(rows.train), [r.category for r in rows.test]
    half = len(rows.test) // 2
    first, second = fit(rows.test[half:]), fit(rows.test[:half])  # applied to halves 1, 2

    def by_row(rule_first: dict[str, int], rule_second: dict[str, int]) -> dict[str, int]:
        return {r.id: (rule_first if i < half else rule_second).get(r.category, len(TIERS) - 1)
                for i, r in enumerate(rows.test)}

    rules = CategoryRules([by_row(a, b) for a, b in zip(first.rules, second.rules, strict=True)],
                          by_row(first.chosen, second.chosen), first.weight, first.weights)
    return rules, [r.id for r in rows.test]


def score_responses(obs: Observations, scorer: ResponseScorer, texts: list[str],
                    responses: dict[int, list[str]],
                    finish_reasons: dict[int, list[str | None]] | None = None) -> None:
    """Fill ``obs.scores`` for every asked (row, tier) -- mapped tiers copy theirs -- and
    ``obs.scorer_ms``, the scorer's time per pair (batched, so a lower bound per request).
    The scorer gets what the request path's cascade gives it: prompt text, answer, answering
    tier and the provider's finish reason."""
    started = time.perf_counter()
    pairs = 0
    for j, answers in responses.items():
        asked = [i for i, a in enumerate(answers) if obs.tier_map[i, j] == j]
        if asked:
            finish = None if finish_reasons is None else [finish_reasons[j][i] for i in asked]
            values = scorer.score([texts[i] for i in asked], [answers[i] for i in asked],
                                  [TIERS[j]] * len(asked), finish)
            obs.scores[asked, j] = values
            pairs += len(asked)
    rows = np.arange(len(obs))
    for j in range(len(TIERS)):
        obs.scores[:, j] = obs.scores[rows, obs.tier_map[:, j]]
    obs.scorer_ms = (time.perf_counter() - started) * 1000 / max(pairs, 1)


def models_label(policy: RouterPolicy, scorer: ResponseScorer) -> str:
    """The model versions observations are tied to (a saved file is reused only with them)."""
    return f"classifier {policy.classifier.meta.version} | scorer {scorer.meta.version}"


def _observed(policy: RouterPolicy, scorer: ResponseScorer, records: list[WorkloadRecord],
              mapping: np.ndarray, simulator_url: str, concurrency: int,
              observations: Path | None) -> tuple[Observations, float]:
    """Observe ``records`` (and score the answers), or reuse ``observations`` if that file
    exists (tied to the rows and models that made it: refused otherwise), saving new ones
    there. Returns the observations and the seconds it took."""
    started = time.perf_counter()
    models = models_label(policy, scorer)
    if observations is not None and observations.exists():
        try:
            obs = Observations.load(observations)
        except ObservationsError as exc:
            raise BenchError(str(exc)) from None
        if obs.ids != [r.id for r in records]:
            raise BenchError(f"{observations} holds other rows than this bench's; delete it")
        if obs.models != models:
            raise BenchError(f"{observations} was observed with {obs.models!r}, not "
                             f"{models!r}; delete it to observe again")
    else:
        obs, texts, responses, finish = asyncio.run(observe(
            policy, records, mapping, simulator_url, concurrency=concurrency))
        score_responses(obs, scorer, texts, responses, finish)
        obs.models = models
        if observations is not None:
            observations.parent.mkdir(parents=True, exist_ok=True)
            obs.save(observations)
    return obs, time.perf_counter() - started


def _beside(path: Path | None, part: str) -> Path | None:
    """``obs.npz`` -> ``obs.validation.npz``: where a second set of observations is kept."""
    return None if path is None else path.with_name(f"{path.stem}.{part}{path.suffix}")


def _policy(config: RouterConfig, classifier: TierClassifier, scorer: ResponseScorer,
            simulator_url: str) -> RouterPolicy:
    """The request path the bench observes through: no cache (every row reaches the
    classifier and a provider) and no decision log."""
    from router.dispatch import Dispatcher
    from router.policy import RouterPolicy

    return RouterPolicy(config, classifier, Dispatcher(config, api_base_override=simulator_url),
                        scorer=scorer, cache=None)


def _settings(policy: RouterPolicy, config: RouterConfig, bootstrap: int,
              seed: int) -> BenchSettings:
    """What ships: the policy's operating point (stored with the model version, else the
    config's defaults; ``source`` says which) and the config's cascade -- never refit here."""
    return BenchSettings(point=policy.point, max_calls=config.cascade.max_calls,
                         cascade=config.cascade.enabled, bootstrap=bootstrap, seed=seed)


def run_outcome_bench(workload: Workload, rows: Rows, config: RouterConfig,
                      classifier: TierClassifier, scorer: ResponseScorer, simulator_url: str,
                      *, bootstrap: int = 500, seed: int = 0, concurrency: int = 8,
                      observations: Path | None = None) -> dict[str, Any]:
    """Observe ``rows.test`` (and ``rows.validation``, which the curves keep their settings on)
    through the real path and evaluate every approach at the stored operating point.

    ``observations``: an ``.npz`` to reuse if it exists, else where to save what was observed
    (the validation rows beside it, ``<stem>.validation.npz``).
    """
    policy = _policy(config, classifier, scorer, simulator_url)
    mapping = tier_map(workload)
    obs, observed_s = _observed(policy, scorer, rows.test, np.tile(mapping, (len(rows.test), 1)),
                                simulator_url, concurrency, observations)
    rules, obs.categories = _category_rules(workload, rows, config, mapping, obs.tiers)
    settings = _settings(policy, config, bootstrap, seed)
    validation = None
    if rows.validation:
        validation, seconds = _observed(policy, scorer, rows.validation,
                                        np.tile(mapping, (len(rows.validation), 1)),
                                        simulator_url, concurrency,
                                        _beside(observations, "validation"))
        observed_s += seconds
    else:
        logger.warning("%s: no validation rows; the curves use every grid point",
                       workload.name)
    three_tier = len(obs.tiers) == len(TIERS)
    report = evaluate(obs, settings, category_rules=rules, validation=validation,
                      two_tier=not three_tier, medium_ablation=three_tier)
    report.update({
        "workload": workload.name, "rows_source": rows.source,
        "classifier": classifier.meta.version, "scorer": scorer.meta.version,
        "threshold_source": settings.point.source, "observe_seconds": round(observed_s, 1),
        "router_overhead_ms_p50": float(np.median(obs.overhead_ms)),
        "per_category_rule": {"cost_weight": rules.weight, "fitted_on": (
            f"{len(rows.train)} training rows" if rows.train else "two-fold cross-fit")},
        "validation": (f"{len(rows.validation)} validation-fold rows (curve settings only; "
                       "the operating point is the stored one)" if rows.validation else
                       "none: no validation fold for this workload, every grid point kept"),
    })
    return report


def _fold_ids_by_source(path: Path | None) -> dict[str, set[str]] | None:
    """Row ids per source in a split-stage fold file (None when there is none)."""
    if path is None or not path.exists():
        return None
    import pandas as pd

    fold = pd.read_parquet(path, columns=["row_id", "source"])
    return {source: set(group["row_id"]) for source, group in fold.groupby("source")}


def run_mixed_bench(workloads: dict[str, Workload], test_fold: Path | None, n: int,
                    config: RouterConfig, classifier: TierClassifier, scorer: ResponseScorer,
                    simulator_url: str, *, bootstrap: int = 500, seed: int = 0,
                    concurrency: int = 8, observations: Path | None = None) -> dict[str, Any]:
    """The ``mixed`` workload (:mod:`bench.mixed`), cache off: every approach at the stored
    point, broken down by mixture part, with val-fixed curves on a validation mixture."""
    from bench.mixed import MIXTURE, draw, part_rule, support_quality

    test_ids = _fold_ids_by_source(test_fold)
    validation_ids = (_fold_ids_by_source(test_fold.with_name(VALIDATION_FOLD))
                      if test_fold is not None else None)
    rows = draw(workloads, test_ids, n, seed)
    policy = _policy(config, classifier, scorer, simulator_url)
    obs, observed_s = _observed(policy, scorer, rows.records, rows.mapping, simulator_url,
                                concurrency, observations)
    support_quality(obs, rows.part)
    obs.categories = list(rows.part)
    settings = _settings(policy, config, bootstrap, seed)
    validation, validation_note = None, "none: no validation folds, every grid point kept"
    if validation_ids:
        # A validation mixture of its own (validation folds; support from the train splits),
        # observed the same way: the curves keep their settings there.
        val_rows = draw(workloads, validation_ids, n, seed + 1, support_split="train")
        validation, seconds = _observed(policy, scorer, val_rows.records, val_rows.mapping,
                                        simulator_url, concurrency,
                                        _beside(observations, "validation"))
        support_quality(validation, val_rows.part)
        validation.categories = list(val_rows.part)
        observed_s += seconds
        validation_note = (f"a validation mixture of {len(val_rows.records)} rows (curve "
                           "settings only; the operating point is the stored one)")
    rule = part_rule()
    report = evaluate(obs, settings, category_rules=CategoryRules([rule], rule, 0.0),
                      validation=validation, groups=rows.part)
    report.update({
        "workload": "mixed", "mixture": dict(MIXTURE), "cache": "off",
        "rows_source": "test folds" if test_ids else "all rows",
        "parts": {part: rows.part.count(part) for part in MIXTURE},
        "classifier": classifier.meta.version, "scorer": scorer.meta.version,
        "threshold_source": settings.point.source, "observe_seconds": round(observed_s, 1),
        "validation": validation_note,
        "per_category_rule": {"cost_weight": 0.0, "fitted_on": (
            "none: support to the cheapest tier, every other part to the frontier")},
        "router_overhead_ms_p50": float(np.median(obs.overhead_ms)),
    })
    return report


# Which validation each data set fits on: Banking77 has no validation split (carved from train);
# CLINC150's own validation split is closer to its test split than a carve (see bench.paraphrase).
PARAPHRASE_VALIDATION = {"banking77": "carve", "clinc150": "split"}
# A semantic hit needs at least two nearest entries holding the served answer. With one, the
# mixed workload's templated questions (MMLU "which of these two scenarios...", RouterBench
# few-shot prompts) hit *other* questions at cosine 0.97-0.99 in the classifier's compressed
# space -- 12 of 83 hits false; distinct questions never share an answer, so support 2 stops it.
PARAPHRASE_SUPPORTS = (2, 3, 4, 6, 8, 12, 16)


def run_paraphrase_bench(classifier: TierClassifier, *, seed: int = 0, limit: int | None = None,
                         bootstrap: int = 1000) -> dict[str, Any]:
    """The cache's paraphrase benchmark on both data sets, in the request path's encoder space
    (the classifier's own pass), beside plain cosine in base MiniLM at the same test hit rate."""
    from bench.paraphrase import paraphrase_benchmark
    from router.cache import Encoder, EncoderError, MiniLMEncoder, SharedPassEncoder

    base = MiniLMEncoder()
    try:
        encoder: Encoder = SharedPassEncoder(classifier)
    except EncoderError:
        encoder = base
    report: dict[str, Any] = {"workload": "paraphrase", "encoder": encoder.name,
                              "datasets": {}, "runs": {}}
    for name, validation in PARAPHRASE_VALIDATION.items():
        ours = paraphrase_benchmark(name, encoder, validation=validation, max_train=limit,
                                    max_test=limit, seed=seed, bootstrap=bootstrap,
                                    supports=PARAPHRASE_SUPPORTS)
        rate = ours["test"]["hit_rate"]
        plain = (ours if encoder is base else paraphrase_benchmark(
            name, base, validation=validation, max_train=limit, max_test=limit, seed=seed,
            bootstrap=0, curve_rates=(rate,)))
        at_rate = plain["test_curve"][0]["baseline_false_share"] if plain["test_curve"] \
            else None
        report["datasets"][name] = {
            "hit_rate": rate, "false_hit_share": ours["test"]["false_share"],
            "fitted": ours["fitted"],
            # plain cosine at the same test hit rate, in the same space and in base MiniLM:
            # the target is judged against the better (lower) of the two
            "baseline_false_hit_share": min(
                ours["baseline_same_hit_rate"]["false_share"],
                at_rate if at_rate is not None else 1.0),
            "plain_cosine_same_space": ours["baseline_same_hit_rate"]["false_share"],
            "plain_cosine_base_minilm": at_rate,
        }
        report["runs"][name] = {"ours": ours, "base_minilm": plain}
    return report
