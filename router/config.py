"""The router config (``configs/router.yaml``): one pydantic model, loaded once per process.

``model_list`` is LiteLLM's own format, passed to ``litellm.Router`` unchanged: one model group per
tier (``model_name`` is the tier), each deployment with its per-token prices. The other sections
are the router's own. Unknown keys are errors (a typo must not silently fall back to a default),
except inside ``litellm_params``, which LiteLLM owns.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.errors import ConfigError
from router.tiers import TIERS, Tier

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LiteLLMParams(BaseModel):
    """``litellm_params`` of one deployment. Extra LiteLLM keys (rpm, max_retries...) pass through.

    Prices are USD per token and required: the router reports cost per call from them.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1, description="LiteLLM model string, e.g. openai/gpt-4o")
    api_base: str | None = None
    api_key: str | None = None
    input_cost_per_token: float = Field(ge=0.0)
    output_cost_per_token: float = Field(ge=0.0)
    timeout: float | None = Field(default=None, gt=0.0, description="seconds")

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = urlparse(value)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value


class ModelInfo(BaseModel):
    """``model_info`` of one deployment. ``id`` names the deployment in logs and metrics.

    ``recorded_model`` (simulator only) names the workload data's model this deployment replays,
    for a further fallback model in a tier; by default the tier's model is replayed.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str | None = None
    recorded_model: str | None = None


class Deployment(_Strict):
    """One entry of LiteLLM's ``model_list``: a tier served by one provider."""

    model_name: Tier
    litellm_params: LiteLLMParams
    model_info: ModelInfo = ModelInfo()

    @property
    def provider(self) -> str:
        """The provider's name: the ``/p/<provider>/`` path segment, else the API host."""
        base = self.litellm_params.api_base or ""
        match = re.search(r"/p/([^/]+)", urlparse(base).path)
        if match:
            return match.group(1)
        return urlparse(base).hostname or self.litellm_params.model.split("/", 1)[0]

    @property
    def served_model(self) -> str:
        """The model name sent to the provider (the LiteLLM provider prefix removed)."""
        model = self.litellm_params.model
        return model.split("/", 1)[1] if "/" in model else model

    @property
    def key(self) -> str:
        """``provider/model``: how ``--fail`` and logs name this deployment."""
        return f"{self.provider}/{self.served_model}"


class RouterSettings(_Strict):
    """Settings passed to ``litellm.Router``; times in seconds."""

    num_retries: int = Field(default=2, ge=0)
    timeout: float = Field(default=30.0, gt=0.0)
    allowed_fails: int = Field(default=3, ge=0)
    cooldown_time: float = Field(default=30.0, ge=0.0)
    retry_after: float = Field(default=0.0, ge=0.0)
    routing_strategy: Literal[
        "simple-shuffle", "least-busy", "usage-based-routing", "latency-based-routing",
        "cost-based-routing", "usage-based-routing-v2",
    ] = "simple-shuffle"


class GateConfig(_Strict):
    """Defaults of the decision's operating point (:mod:`router.gate`); the point fitted and
    stored with a model version overrides them, an A/B variant's overrides both.

    The rule chooses the tier maximising P(acceptable) - ``price_weight`` x expected USD;
    confidence (P of that tier) >= ``trust_threshold``: route; between the two thresholds:
    cascade (an answer scored below ``score_threshold`` fails its check); below
    ``escalate_threshold``: escalate.
    """

    # Probability per USD: at 50, a tier whose expected price is 1 m$ higher must be 0.05 (five
    # points) likelier to give an acceptable answer to be worth it (GPT-4 on a short prompt
    # costs ~1-5 m$ more than Mixtral).
    price_weight: float = Field(default=50.0, ge=0.0, allow_inf_nan=False)
    escalate_threshold: Probability = 0.50
    trust_threshold: Probability = 0.80
    score_threshold: Probability = 0.5
    # Quality points a cascade must gain per expected escalation (its second call's latency).
    escalation_weight: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> GateConfig:
        if self.escalate_threshold > self.trust_threshold:
            raise ValueError(f"escalate_threshold ({self.escalate_threshold}) must not exceed "
                             f"trust_threshold ({self.trust_threshold})")
        return self


class OverrideRule(_Strict):
    """A high-stakes domain rule: a request matching any keyword or pattern goes to ``tier``.

    Keywords match whole words, case-insensitively; patterns are Python regular expressions,
    matched case-insensitively against the normalised request text.
    """

    name: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    tier: Tier = "critical"
    keywords: list[str] = []
    patterns: list[str] = []

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: "
                                 f"{exc}") from None
        return patterns

    @model_validator(mode="after")
    def _matches_something(self) -> OverrideRule:
        if not self.keywords and not self.patterns:
            raise ValueError(f"rule {self.name!r} needs at least one keyword or pattern")
        return self


class OverridesConfig(_Strict):
    enabled: bool = True
    rules: list[OverrideRule] = []

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[OverrideRule]) -> list[OverrideRule]:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {duplicates}")
        return rules


class CascadeConfig(_Strict):
    """Cascade: call the predicted tier, score the answer, escalate when the score is low."""

    enabled: bool = True
    max_calls: int = Field(default=2, ge=1, le=len(TIERS))
    # A request whose budget a cascade would overrun goes straight to the tier the gate names.
    latency_budget_ms: float | None = Field(default=None, gt=0.0)
    latency_budget_header: str = "x-router-latency-budget-ms"


class CacheConfig(_Strict):
    enabled: bool = True
    backend: Literal["embedded", "chroma"] = "embedded"
    path: str = "var/cache"  # embedded: where entries persist
    url: str | None = None  # chroma: the server shared by the replicas, http://host:port
    ttl_s: float = Field(default=86_400.0, gt=0.0)
    max_entries: int = Field(default=100_000, ge=1)
    # Default cosine similarity for a semantic hit; a threshold fitted on paraphrase data wins.
    similarity_threshold: Probability = 0.95
    # Agreement test (router.cache.embedded): a semantic hit also needs its cosine to beat, by
    # min_margin, the nearest entry holding a *different* stored answer among `neighbours`
    # entries, and its min_support nearest entries to hold the same answer. 0 and 1 turn it off
    # (plain cosine); fitted values come from bench.paraphrase.
    min_margin: float = Field(default=0.0, ge=0.0, le=2.0)
    min_support: int = Field(default=1, ge=1)
    neighbours: int = Field(default=32, ge=1, le=1024)

    @model_validator(mode="after")
    def _server_named(self) -> CacheConfig:
        if self.backend == "chroma" and not self.url:
            raise ValueError("backend 'chroma' needs url (the Chroma server, http://host:port)")
        return self

    @model_validator(mode="after")
    def _support_within_window(self) -> CacheConfig:
        if self.min_support > self.neighbours:
            raise ValueError(f"min_support ({self.min_support}) must not exceed neighbours "
                             f"({self.neighbours})")
        return self


RetentionDays = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class DecisionLogRetention(_Strict):
    """How long logged prompts (``decisions.text``) are kept, in days since ``created_at``.

    ``tier-router log retain`` then sets ``text`` to NULL; the row, its hash and its metrics
    stay. ``prompt_days``: the default, None = keep forever; ``tenants``: per-tenant days that
    override it (``{tenant: days}``; 0 = clear at the next run).
    """

    prompt_days: RetentionDays | None = 30.0
    tenants: dict[Annotated[str, Field(min_length=1)], RetentionDays] = {}


class DecisionLogConfig(_Strict):
    url: str = Field(default="sqlite:///var/decisions.sqlite",
                     description="SQLAlchemy URL; a PostgreSQL URL works unchanged")
    # How logged prompts are kept: redact = PII and secrets replaced by typed placeholders
    # (router.pii; harvest can still train on them), hash = no text at all (text_hash only),
    # keep = verbatim.
    prompts: Literal["redact", "hash", "keep"] = "redact"
    retention: DecisionLogRetention = DecisionLogRetention()

    @field_validator("url")
    @classmethod
    def _sqlalchemy_url(cls, url: str) -> str:
        if not re.match(r"^[a-z][a-z0-9+]*://", url):
            raise ValueError(f"must be a SQLAlchemy URL such as sqlite:///path, got {url!r}")
        return url


class ABVariant(_Strict):
    """One arm of a threshold A/B test. ``gate``: its thresholds; None keeps the thresholds the
    serving model version carries (the control arm)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=40)
    weight: float = Field(default=1.0, gt=0.0)
    gate: GateConfig | None = None


class ABConfig(_Strict):
    """A threshold A/B test: each request is assigned one variant by a stable hash of its
    tenant (``split_by: tenant``: a tenant sees one arm) or of its request id (``request``),
    salted with ``salt`` (change it to reshuffle). Variants share traffic by ``weight``."""

    enabled: bool = False
    split_by: Literal["tenant", "request"] = "tenant"
    salt: str = Field(default="ab", min_length=1)
    variants: list[ABVariant] = []

    @model_validator(mode="after")
    def _two_named_arms(self) -> ABConfig:
        names = [variant.name for variant in self.variants]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique; repeated: {repeated}")
        if self.enabled and len(self.variants) < 2:
            raise ValueError("an enabled A/B test needs at least two variants")
        return self


class MonitorConfig(_Strict):
    """In-process drift and health gauges over the last ``window`` decisions (DESIGN: alert
    when escalation exceeds 5%); the alert thresholds themselves live in the alert rules."""

    window: int = Field(default=1000, ge=10)
    # Fewest decisions in the window before the drift and rate gauges are exported (else NaN).
    min_requests: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _fits(self) -> MonitorConfig:
        if self.min_requests > self.window:
            raise ValueError(f"min_requests ({self.min_requests}) must not exceed window "
                             f"({self.window})")
        return self


class RouterConfig(_Strict):
    """The whole router config."""

    model_list: list[Deployment] = Field(min_length=1)
    router_settings: RouterSettings = RouterSettings()
    gate: GateConfig = GateConfig()
    overrides: OverridesConfig = OverridesConfig()
    cascade: CascadeConfig = CascadeConfig()
    cache: CacheConfig = CacheConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()
    ab: ABConfig = ABConfig()
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _every_tier_served(self) -> RouterConfig:
        missing = [tier for tier in TIERS if not self.deployments(tier)]
        if missing:
            raise ValueError(f"model_list has no deployment for tier(s) {missing}")
        keys = [deployment.key for deployment in self.model_list]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"model_list repeats deployment(s) {repeated}")
        ids = [d.model_info.id for d in self.model_list if d.model_info.id]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"model_info.id must be unique; repeated: {repeated}")
        return self

    def deployments(self, tier: Tier) -> list[Deployment]:
        """The deployments serving ``tier``, in config order."""
        return [d for d in self.model_list if d.model_name == tier]

    def list_price(self, tier: str | None, prompt_tokens: int | None,
                   completion_tokens: int | None) -> float | None:
        """USD the tier's first deployment charges for these token counts (an estimate of
        what a tier *would* have cost: shadow mode, threshold replays); None without tokens."""
        if prompt_tokens is None or completion_tokens is None:
            return None
        for deployment in self.model_list:
            if deployment.model_name == tier:
                params = deployment.litellm_params
                return (prompt_tokens * params.input_cost_per_token
                        + completion_tokens * params.output_cost_per_token)
        return None

    def litellm_model_list(self) -> list[dict[str, Any]]:
        """``model_list`` as plain dicts for ``litellm.Router(model_list=...)``."""
        return [d.model_dump(exclude_none=True) for d in self.model_list]


def _field_path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_config(data: Any, source: str = "<config>") -> RouterConfig:
    """Validate already-parsed YAML; raises :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"top level must be a mapping, got "
                                        f"{type(data).__name__}")])
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field (not allowed here)"
            elif "input" in error and error["type"] not in ("missing",) and not isinstance(
                    error["input"], dict | list):
                message = f"{message} (got {error['input']!r})"
            problems.append((_field_path(error["loc"]) or "(top level)", message))
        raise ConfigError(source, problems) from None


def load_config(path: str | Path) -> RouterConfig:
    """Read and validate a router YAML file; raises :class:`ConfigError` naming file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [("", f"{where}invalid YAML: "
                                           f"{getattr(exc, 'problem', None) or exc}")]) from None
    return parse_config(data, str(path))
