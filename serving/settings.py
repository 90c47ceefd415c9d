"""Service settings: the one place the serving side reads its environment.

Every setting has a documented default that works on a fresh clone after ``make repro``
(``make demo`` relies on them). ``ServiceSettings.from_env()`` is called once, at service start.

Inside a built Bento (``make bento``) the classifier and scorer default to the bundles it
carries, so it serves with no MLflow store.

- ``ROUTER_CONFIG``: router YAML (``configs/router.yaml``)
- ``ROUTER_CLASSIFIER``: ``models:/NAME@ALIAS``, a bundle folder or ``fixed:TIER``
  (``models:/tier-classifier@champion``)
- ``ROUTER_CLASSIFIER_FALLBACK``: what scores requests while a remote (``vllm:``) classifier
  is down or slow: ``fixed:critical`` (default) or a local spec (the same weights in-process)
- ``ROUTER_CLASSIFIER_TIMEOUT_S``: a remote classifier call slower than this fails (1.0)
- ``ROUTER_BREAKER_FAILURES``: failures in a row that open the circuit (3)
- ``ROUTER_BREAKER_RESET_S``: seconds the circuit stays open before one trial call (10)
- ``ROUTER_BATCH_MAX``: most texts in one classifier pass when concurrent requests are batched
  together (router/batching.py; 1 = every request alone) (32)
- ``ROUTER_SCORER``: response scorer spec, or ``none`` (``models:/response-scorer@champion``)
- ``ROUTER_SHADOW_CLASSIFIER``: a challenger that scores live traffic beside the serving
  classifier without acting on it (shadow mode), e.g. ``models:/tier-classifier@challenger``;
  an alias is followed like the serving one's (none)
- ``MLFLOW_TRACKING_URI``: MLflow store for ``models:/`` specs (``sqlite:///mlruns/mlflow.db``)
- ``ROUTER_RELOAD_INTERVAL_S``: seconds between alias checks, 0 = never (30)
- ``ROUTER_API_KEYS``: file of ``<sha256 hex of key> <tenant>`` lines (none)
- ``ROUTER_DEMO_KEY``: one plain key for tenant ``demo`` (none; ``make demo`` sets one)
- ``ROUTER_RATE_LIMIT_RPS`` / ``ROUTER_RATE_LIMIT_BURST``: requests a second per API key on
  average, and the burst allowed; more gets 429 (0 = no limit; burst defaults to 2x the rate)
- ``ROUTER_TENANT_BUDGETS``: monthly USD budgets, ``tenant=usd,tenant=usd``; a tenant whose
  spend reached its budget gets 403 (none)
- ``ROUTER_PROVIDER_BASE``: rebase every provider ``api_base`` onto this root, e.g. the
  simulator's ``http://127.0.0.1:8900`` (none: as configured)
- ``ROUTER_DECISION_LOG_URL``: SQLAlchemy URL, wins over the config's (the config's)
- ``ROUTER_DECISION_SPILL_PATH``: where records wait while the database is down
  (``var/decisions.spill.jsonl``); one per replica
- ``ROUTER_CACHE_DIR``: embedded cache folder, wins over the config's (the config's)
- ``ROUTER_CACHE_URL``: a Chroma server shared by the replicas; switches the cache to the
  ``chroma`` backend (the config's backend)
- ``ROUTER_MAX_BODY_BYTES``: largest request body accepted, bytes (1048576)
- ``ROUTER_MAX_PROMPT_TOKENS``: largest prompt accepted, tokens as the simulator counts them
  (Qwen's BPE + OpenAI's per-message framing); larger gets 413 (32768)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.errors import ConfigError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """How API keys are stored: SHA-256 hex of the key (keys are long random strings, so an
    unsalted fast hash is enough; the plain key is never written anywhere)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path = Path("configs/router.yaml")
    classifier: str = "models:/tier-classifier@champion"
    classifier_fallback: str = "fixed:critical"
    batch_max: int = Field(default=32, ge=1, le=1024)
    classifier_timeout_s: float = Field(default=1.0, gt=0.0)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=10.0, gt=0.0)
    scorer: str | None = "models:/response-scorer@champion"
    shadow_classifier: str | None = None
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    reload_interval_s: float = Field(default=30.0, ge=0.0)
    api_keys: dict[str, str] = Field(default_factory=dict)  # sha256(key) -> tenant
    rate_limit_rps: float = Field(default=0.0, ge=0.0)
    rate_limit_burst: int | None = Field(default=None, ge=1)
    tenant_budgets: dict[str, float] = Field(default_factory=dict)
    provider_base: str | None = None
    decision_log_url: str | None = None
    decision_spill_path: Path | None = None
    cache_dir: str | None = None
    cache_url: str | None = None
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_prompt_tokens: int = Field(default=32_768, ge=16)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> ServiceSettings:
        """Read the variables above; a bad value is a :class:`ConfigError` naming it. Inside a
        built Bento the defaults are the models it carries (:func:`bundled_models`)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        bundled = bundled_models(Path.cwd() if cwd is None else cwd)
        if bundled is not None:
            values["classifier"] = f"path:{bundled / 'classifier'}"
            values["scorer"] = (str(bundled / "scorer") if (bundled / "scorer").is_dir()
                                else None)
        names = {"ROUTER_CONFIG": "config", "ROUTER_CLASSIFIER": "classifier",
                 "ROUTER_CLASSIFIER_FALLBACK": "classifier_fallback",
                 "ROUTER_BATCH_MAX": "batch_max",
                 "ROUTER_CLASSIFIER_TIMEOUT_S": "classifier_timeout_s",
                 "ROUTER_BREAKER_FAILURES": "breaker_failures",
                 "ROUTER_BREAKER_RESET_S": "breaker_reset_s",
                 "ROUTER_SCORER": "scorer", "MLFLOW_TRACKING_URI": "tracking_uri",
                 "ROUTER_SHADOW_CLASSIFIER": "shadow_classifier",
                 "ROUTER_RELOAD_INTERVAL_S": "reload_interval_s",
                 "ROUTER_PROVIDER_BASE": "provider_base",
                 "ROUTER_RATE_LIMIT_RPS": "rate_limit_rps",
                 "ROUTER_RATE_LIMIT_BURST": "rate_limit_burst",
                 "ROUTER_DECISION_LOG_URL": "decision_log_url",
                 "ROUTER_DECISION_SPILL_PATH": "decision_spill_path",
                 "ROUTER_CACHE_DIR": "cache_dir", "ROUTER_CACHE_URL": "cache_url",
                 "ROUTER_MAX_BODY_BYTES": "max_body_bytes",
                 "ROUTER_MAX_PROMPT_TOKENS": "max_prompt_tokens"}
        for variable, name in names.items():
            if env.get(variable):
                values[name] = env[variable]
        for name in ("scorer", "shadow_classifier"):
            if str(values.get(name, "")).lower() == "none":
                values[name] = None
        keys: dict[str, str] = {}
        if env.get("ROUTER_API_KEYS"):
            keys.update(read_key_file(Path(env["ROUTER_API_KEYS"])))
        if env.get("ROUTER_DEMO_KEY"):
            keys[hash_key(env["ROUTER_DEMO_KEY"])] = "demo"
        values["api_keys"] = keys
        if env.get("ROUTER_TENANT_BUDGETS"):
            budgets = {}
            for item in env["ROUTER_TENANT_BUDGETS"].split(","):
                tenant, _, usd = item.strip().partition("=")
                try:
                    budgets[tenant.strip()] = float(usd)
                except ValueError:
                    raise ConfigError("environment", [(
                        "ROUTER_TENANT_BUDGETS", f"expected tenant=usd pairs, got {item!r}")]
                    ) from None
            values["tenant_budgets"] = budgets
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            reverse = {name: variable for variable, name in names.items()}
            raise ConfigError("environment", [
                (reverse.get(str(error["loc"][0]), str(error["loc"][0])), error["msg"])
                for error in exc.errors()]) from None


BUNDLED_MODELS = Path("var/bento-models")  # where `make bento` exports the champion bundles


def bundled_models(cwd: Path) -> Path | None:
    """The models folder a built Bento carries, when running inside one: BentoML serves a Bento
    from its ``src`` folder with ``bento.yaml`` beside it. None in a checkout (there the MLflow
    registry is the source, and the alias reload works)."""
    folder = cwd / BUNDLED_MODELS
    if (cwd.name == "src" and (cwd.parent / "bento.yaml").is_file()
            and (folder / "classifier").is_dir()):
        return folder
    return None


def read_key_file(path: Path) -> dict[str, str]:
    """``sha256-hex tenant`` per line (``#`` comments). Plain keys are refused: the file is
    what sits at rest."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read the API key file: {exc}")]) from None
    keys, problems = {}, []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not _HEX64.match(parts[0]):
            problems.append((f"line {number}", "expected '<sha256 hex of the key> <tenant>'"))
            continue
        keys[parts[0]] = parts[1]
    if problems:
        raise ConfigError(str(path), problems)
    return keys


def tenant_for(key: str | None, keys: Mapping[str, str]) -> str | None:
    """The tenant of an API key, or None. Compares the key's hash against every stored hash
    in constant time (no early exit on the first match)."""
    if not key:
        return None
    digest = hash_key(key)
    found = None
    for stored, tenant in keys.items():
        if hmac.compare_digest(stored, digest):
            found = tenant
    return found
