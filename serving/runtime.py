"""What the service runs on: the router policy built from settings, and its model reloads.

``Runtime.start()`` loads the config, the classifier (``models:/tier-classifier@champion`` by
default), the response scorer, the cache, the dispatcher and the decision log, and builds one
:class:`router.policy.RouterPolicy`. With a ``models:/NAME@ALIAS`` classifier a watcher thread
asks MLflow every ``reload_interval_s`` which version the alias points at; when it moved, the
new version is loaded *beside* the serving one and swapped in with one assignment, so requests
in flight finish on the model they started with and none waits. Rolling back is moving the
alias back. Each classifier version gets its own cache folder: the cache's vectors come from
the classifier's own encoder pass, so another version's vectors are in another space.

Shadow mode (``ROUTER_SHADOW_CLASSIFIER``, e.g. ``models:/tier-classifier@challenger``): a second
classifier scores each classified request beside the serving one (:mod:`router.shadow`); its
alias is followed by the same watcher. A challenger that does not exist yet or fails to load is
logged and the service runs without a shadow until it appears.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from router.batching import BatchingClassifier
from router.breaker import CircuitBreakerClassifier
from router.cache import (
    CacheError,
    Encoder,
    EncoderError,
    MiniLMEncoder,
    SemanticCache,
    SharedPassEncoder,
    create_cache,
)
from router.classifier import TierClassifier, load_classifier
from router.config import RouterConfig, load_config
from router.dispatch import Dispatcher
from router.errors import RouterError
from router.monitor import DriftMonitor, DriftReferenceError
from router.policy import RouterPolicy
from router.scorer import ResponseScorer, load_scorer
from router.shadow import ShadowScorer
from router.telemetry import DecisionLog, RouterMetrics
from serving.limits import RateLimiter, SpendTracker
from serving.settings import ServiceSettings

logger = logging.getLogger(__name__)

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


class ModelLoadError(RouterError):
    """A classifier, scorer or cache named by the settings could not be loaded."""


@dataclass(frozen=True)
class AliasRef:
    name: str
    alias: str

    @classmethod
    def parse(cls, spec: str) -> AliasRef | None:
        match = _ALIAS.match(spec)
        return cls(match["name"], match["alias"]) if match else None


class Runtime:
    """The serving policy and everything it shares across model versions."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = RouterMetrics()
        self.policy: RouterPolicy | None = None  # swapped whole on a reload
        self.model_version: str | None = None  # registry version of the serving classifier
        self.config: RouterConfig | None = None
        self.decision_log: DecisionLog | None = None
        self.spend: SpendTracker | None = None
        self.monitor: DriftMonitor | None = None
        self.rate_limiter: RateLimiter | None = None
        self._dispatcher: Dispatcher | None = None
        self._scorer: ResponseScorer | None = None
        # One cache per embedding space (encoder name), reused when a version comes back (a
        # rollback): two objects persisting to one folder would overwrite each other.
        self._caches: dict[str, SemanticCache] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._reload_lock = threading.Lock()
        self._alias = AliasRef.parse(settings.classifier)
        self.shadow: ShadowScorer | None = None
        self.shadow_version: str | None = None  # registry version (or spec) of the challenger
        self._shadow_alias = (AliasRef.parse(settings.shadow_classifier)
                              if settings.shadow_classifier else None)

    @property
    def ready(self) -> bool:
        return self.policy is not None

    def start(self) -> Runtime:
        """Load everything; raise :class:`ModelLoadError` / ``ConfigError`` on bad settings."""
        if any(spec and spec.startswith("models:")
               for spec in (self.settings.classifier, self.settings.scorer,
                            self.settings.shadow_classifier)):
            import mlflow  # only for registry specs: a Bento serves files, without MLflow

            mlflow.set_tracking_uri(self.settings.tracking_uri)
        config = load_config(self.settings.config)
        updates = {}
        if self.settings.decision_log_url:
            updates["decision_log"] = config.decision_log.model_copy(
                update={"url": self.settings.decision_log_url})
        if self.settings.cache_url:
            updates["cache"] = config.cache.model_copy(
                update={"backend": "chroma", "url": self.settings.cache_url})
        self.config = config.model_copy(update=updates)
        self._dispatcher = Dispatcher(self.config,
                                      api_base_override=self.settings.provider_base)
        self.decision_log = DecisionLog(self.config.decision_log.url, metrics=self.metrics,
                                        spill_path=self.settings.decision_spill_path)
        self.spend = SpendTracker(self.settings.tenant_budgets, self.decision_log)
        self.decision_log.observers.append(self.spend.observe)
        # Drift gauges on /metrics; the reference is set per classifier version in _install.
        self.monitor = DriftMonitor(self.config.monitor, registry=self.metrics.registry)
        self.decision_log.observers.append(self.monitor.observe)
        rate = self.settings.rate_limit_rps
        self.rate_limiter = (RateLimiter(rate, self.settings.rate_limit_burst
                                         or max(1, round(2 * rate))) if rate > 0 else None)
        if self.settings.scorer:
            try:
                self._scorer = load_scorer(self.settings.scorer)
            except RouterError as exc:
                raise ModelLoadError(f"response scorer: {exc}") from exc
        self.refresh_shadow()
        version = self._alias_version(self._alias) if self._alias else None
        self._install(self._classifier_spec(version), version)
        if (self._alias or self._shadow_alias) and self.settings.reload_interval_s > 0:
            self._watcher = threading.Thread(target=self._watch, name="alias-watcher",
                                             daemon=True)
            self._watcher.start()
        return self

    def reload(self) -> bool:
        """Check the alias now; load and swap in the version it names if that changed.
        Returns True when a new version went live. A version that fails to load is logged
        and the serving one kept."""
        if self._alias is None:
            return False
        with self._reload_lock:
            version = self._alias_version(self._alias)
            if version == self.model_version:
                return False
            try:
                self._install(self._classifier_spec(version), version)
            except ModelLoadError as exc:
                logger.error("alias %s@%s moved to version %s, which does not load; still "
                             "serving version %s: %s", self._alias.name, self._alias.alias,
                             version, self.model_version, exc)
                return False
            return True

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        for cache in self._caches.values():
            cache.close()
        if self.decision_log is not None:
            self.decision_log.close()

    def _classifier_spec(self, version: str | None) -> str:
        if self._alias is None or version is None:
            return self.settings.classifier
        return f"models:/{self._alias.name}/{version}"  # pinned: the alias may move again

    def refresh_shadow(self) -> bool:
        """Load the challenger the shadow setting names when it is new (an alias that moved);
        True when another challenger went live. Never raises: without a loadable challenger
        the service keeps its current shadow (or none) and says why in the log."""
        spec = self.settings.shadow_classifier
        if spec is None or self.config is None:
            return False
        try:
            version = self._alias_version(self._shadow_alias) if self._shadow_alias else spec
            if version == self.shadow_version:
                return False
            load = (f"models:/{self._shadow_alias.name}/{version}" if self._shadow_alias
                    else spec)
            shadow = ShadowScorer(self._load(load), self.config)
        except ModelLoadError as exc:
            logger.warning("shadow classifier %s not loaded (serving without it): %s", spec, exc)
            return False
        previous, self.shadow, self.shadow_version = self.shadow, shadow, version
        if self.policy is not None:
            self.policy.shadow = shadow
        if previous is not None and hasattr(previous.classifier, "close"):
            previous.classifier.close()
        logger.info("shadow classifier %s (%s) scores live traffic", shadow.version, load)
        return True

    def _alias_version(self, ref: AliasRef) -> str:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            found = MlflowClient().get_model_version_by_alias(ref.name, ref.alias)
        except MlflowException as exc:
            raise ModelLoadError(f"models:/{ref.name}@{ref.alias}: {exc}") from exc
        return str(found.version)

    def _load(self, spec: str) -> TierClassifier:
        """The classifier a spec names; a remote one (``vllm:``) behind a circuit breaker whose
        fallback is ``classifier_fallback``."""
        s = self.settings
        try:
            if not spec.startswith("vllm:"):
                classifier = load_classifier(spec)
                if s.batch_max > 1 and hasattr(classifier, "embedding_dim"):
                    return BatchingClassifier(classifier, max_batch=s.batch_max)
                return classifier
            from router.vllm_classifier import from_spec

            return CircuitBreakerClassifier(
                from_spec(spec.removeprefix("vllm:"), timeout_s=s.classifier_timeout_s),
                load_classifier(s.classifier_fallback), failures_to_open=s.breaker_failures,
                reset_after_s=s.breaker_reset_s)
        except RouterError as exc:
            raise ModelLoadError(f"tier classifier {spec}: {exc}") from exc

    def _install(self, spec: str, version: str | None) -> None:
        assert self.config is not None and self._dispatcher is not None
        classifier = self._load(spec)
        cache, encoder = self._cache_for(classifier)
        if self.monitor is not None:
            try:
                self.monitor.set_reference(classifier.meta.reference)
            except DriftReferenceError as exc:  # read_meta validated it; belt and braces
                raise ModelLoadError(f"tier classifier {spec}: {exc}") from exc
            if classifier.meta.reference is None:
                logger.warning("tier classifier %s carries no drift reference: the drift "
                               "gauges stay NaN (re-run calibrate)", classifier.meta.version)
        previous_policy = self.policy
        self.policy = RouterPolicy(self.config, classifier, self._dispatcher,
                                   decision_log=self.decision_log, scorer=self._scorer,
                                   cache=cache, encoder=encoder, shadow=self.shadow)
        if previous_policy is not None and hasattr(previous_policy.classifier, "close"):
            # Requests still on the old policy finish unbatched; its model is freed after.
            previous_policy.classifier.close()
        previous, self.model_version = self.model_version, version
        logger.info("serving tier classifier %s (%s)%s", classifier.meta.version, spec,
                    f", replacing version {previous}" if previous else "")

    def _cache_for(self, classifier: TierClassifier
                   ) -> tuple[SemanticCache | None, Encoder | None]:
        """The cache for this classifier's embedding space, and the encoder that fills it when
        the classifier cannot share its pass (a remote one: then MiniLM runs beside it)."""
        if not self.config or not self.config.cache.enabled:
            return None, None
        try:
            if hasattr(classifier, "embedding_dim"):
                encoder, own = SharedPassEncoder(classifier), None
            else:
                encoder = own = MiniLMEncoder()
            cache = self._caches.get(encoder.name)
            if cache is None:
                root = Path(self.settings.cache_dir or self.config.cache.path)
                cache = create_cache(self.config.cache, encoder,
                                     path=str(root / encoder.name.replace(":", "-")))
        except (CacheError, EncoderError) as exc:
            raise ModelLoadError(f"cache: {exc}") from exc
        self._caches[encoder.name] = cache
        return cache, own

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_s):
            try:
                self.reload()
            except ModelLoadError as exc:  # registry unreachable: keep serving, try again
                logger.warning("alias check failed: %s", exc)
            self.refresh_shadow()
