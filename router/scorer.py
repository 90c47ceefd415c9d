"""Response scorers for the cascade: P(a model's answer is correct | prompt, answer).

The cascade calls the predicted tier, scores its answer and escalates when the score is below
the threshold fitted with the scorer (``meta.threshold``; the config's
``cascade.score_threshold`` is only the default for a scorer without one). Scorers are chosen by
a spec string through a registry, as classifiers are (:mod:`router.classifier`):

* ``fixed:P``: always P in [0, 1] (tests, baselines; no fitted threshold).
* a local bundle directory, or ``path:DIR``: what training's ``scorer`` stage writes to
  ``models/scorer/``.
* ``models:/response-scorer@champion`` (or ``/VERSION``): the bundle registered in MLflow
  (pyfunc artifact ``scorer``; tracking URI from MLflow's own setting, as for classifiers).

Bundle layout (loadable with numpy + transformers only: no pickles, no ``training`` import):

* ``scorer_model.json``: ``{"format": 1, "version", "threshold", "max_length",
  "response_max_chars", "calibration": {"method": "platt", "a", "b", ["by_tier": {tier: {"a",
  "b"}}]} | {"method": "isotonic", "x": [...], "y": [...]} | {"method": "none"}}``. Platt's
  ``by_tier`` maps answers of a known tier (the head shrinks the tier features, so the pooled
  map leaves the simple tier's answers ~0.08 ECE); answers of no stated tier use ``a``, ``b``.
* ``head.npz``: a logistic-regression head on standardised features: ``mean`` (d,), ``scale``
  (d,), ``coef`` (d,), ``intercept`` (1,).
* ``encoder/``: a Hugging Face encoder (frozen all-MiniLM-L6-v2 by default) and its tokenizer;
  texts are mean-pooled and L2-normalised, keeping their *end* (as the classifier does).

Features of one (prompt, response) pair, in this order: the prompt embedding (h), the response
embedding (h), :data:`CHEAP_FEATURES` (12), then :data:`TIER_FEATURES` (3, one-hot of the tier
whose model answered; all zero when the caller does not say) -- d = 2h + 15. Pass the tier: the
default head is trained on tier-model answers only, so a tierless pair is off its training
distribution (and gets the pooled calibration). Measured on the seed data (test fold, tier-model
answers, 128 tokens): the answering tier lifts AUROC from 0.68 to 0.72, and an elementwise
prompt x response product overfits (0.65), so it is not used.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from router.errors import RouterError
from router.registry import registered_artifact_dir
from router.tiers import TIERS

logger = logging.getLogger(__name__)

SCORER_META = "scorer_model.json"
HEAD_FILE = "head.npz"
ENCODER_DIR = "encoder"
BUNDLE_FORMAT = 1
DEFAULT_MAX_LENGTH = 128  # encoder tokens kept from the end of the prompt and of the response
# Characters of a response kept, counted from the end, before tokenizing: bounds tokenizer work
# on runaway answers (RouterBench has a 16k-character one); ~4 characters a token in English.
DEFAULT_RESPONSE_MAX_CHARS = 2048
# The pyfunc artifact holding the scorer bundle (training/register.py logs it).
MLFLOW_ARTIFACT = "scorer"
CALIBRATION_METHODS = ("platt", "isotonic", "none")

# Cheap features of the response text (and the prompt's length), after the embeddings.
CHEAP_FEATURES: tuple[str, ...] = (
    "log_prompt_chars", "log_response_chars", "log_response_words", "log_response_lines",
    "short_answer", "ends_with_number", "states_answer", "hedges", "refuses", "has_code",
    "digit_share", "repeated_lines")
TIER_FEATURES: tuple[str, ...] = tuple(f"answered_by_{tier}" for tier in TIERS)
_SHORT_ANSWER_CHARS = 3  # "A", "2", "(C)": a bare multiple-choice answer
_ENDS_WITH_NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?\W*$")
_STATES_ANSWER = re.compile(r"\b(the (final )?answer is|answer:|therefore|####)", re.I)
_HEDGES = re.compile(r"\b(not sure|unclear|i think|possibly|might be|it depends|ambiguous|"
                     r"cannot be determined|more information)\b", re.I)
_REFUSES = re.compile(r"\b(i('m| am) sorry|i cannot|i can't|i am unable|as an ai|"
                      r"i apologi[sz]e)\b", re.I)
_HAS_CODE = re.compile(r"```|\bdef \w+\(|\breturn\b")
_WHITESPACE = re.compile(r"\s+")


class ScorerError(RouterError):
    """A response scorer could not be loaded or could not score a pair."""


@dataclass(frozen=True)
class ScorerMeta:
    """What training stored with the scorer: version, fitted threshold, text handling."""

    version: str
    threshold: float | None = None  # escalate when the score is below it; None: config default
    max_length: int = DEFAULT_MAX_LENGTH
    response_max_chars: int = DEFAULT_RESPONSE_MAX_CHARS
    calibration: dict[str, Any] = field(default_factory=lambda: {"method": "none"})


class ResponseScorer(Protocol):
    """Scores answers: the probability that each response answers its prompt correctly."""

    meta: ScorerMeta

    def score(self, prompts: list[str], responses: list[str],
              tiers: Sequence[str | None] | None = None) -> list[float]:
        """``prompts``: n normalised requests (:func:`router.normalise.normalise`),
        ``responses``: their n answers, ``tiers``: the tier that answered each (None: not
        known) -> n probabilities in [0, 1]."""
        ...


class FixedScorer:
    """Always ``p`` (baselines, and tests that must not depend on a model)."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ScorerError(f"fixed scorer: {p!r} is not a probability in [0, 1]")
        self.p = p
        self.meta = ScorerMeta(version=f"fixed:{p:g}")

    def score(self, prompts: list[str], responses: list[str],
              tiers: Sequence[str | None] | None = None) -> list[float]:
        _check_pairs(prompts, responses, tiers)
        return [self.p] * len(prompts)


def _check_pairs(prompts: Sequence[str], responses: Sequence[str],
                 tiers: Sequence[str | None] | None = None) -> None:
    if len(prompts) != len(responses):
        raise ScorerError(f"{len(prompts)} prompts but {len(responses)} responses")
    if tiers is not None:
        if len(tiers) != len(prompts):
            raise ScorerError(f"{len(prompts)} prompts but {len(tiers)} tiers")
        unknown = sorted({str(t) for t in tiers if t is not None and t not in TIERS})
        if unknown:
            raise ScorerError(f"tiers {unknown} are not tiers {list(TIERS)} (or None)")


# --- features (shared with training's scorer stage) --------------------------------------------

def clean_response(text: str, max_chars: int = DEFAULT_RESPONSE_MAX_CHARS) -> str:
    """A response as the encoder sees it: NFC, whitespace runs collapsed, the last ``max_chars``
    characters (the final answer sits at the end)."""
    cleaned = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text or "")).strip()
    return cleaned[-max_chars:]


def cheap_features(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """:data:`CHEAP_FEATURES` of n raw (uncleaned) pairs: float array ``(n, 12)``."""
    _check_pairs(prompts, responses)
    out = np.zeros((len(prompts), len(CHEAP_FEATURES)))
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        response = response or ""
        stripped = response.strip()
        lines = [line.strip() for line in stripped.splitlines() if line.strip()]
        out[i] = (
            math.log1p(len(prompt)), math.log1p(len(stripped)),
            math.log1p(len(stripped.split())), math.log1p(len(lines)),
            float(0 < len(stripped) <= _SHORT_ANSWER_CHARS),
            float(bool(_ENDS_WITH_NUMBER.search(stripped))),
            float(bool(_STATES_ANSWER.search(stripped))),
            float(len(_HEDGES.findall(stripped)) > 0),
            float(bool(_REFUSES.search(stripped))),
            float(bool(_HAS_CODE.search(stripped))),
            sum(c.isdigit() for c in stripped) / max(len(stripped), 1),
            # Degenerate loops (a line repeated over and over) mark a failed answer.
            1.0 - len(set(lines)) / len(lines) if lines else 0.0,
        )
    return out


class TextEncoder:
    """A frozen Hugging Face encoder: texts -> mean-pooled, L2-normalised embeddings ``(n, h)``.

    Texts longer than ``max_length`` tokens keep their end
    (:func:`router.normalise.encode_for_classifier`). Identical texts are embedded once.
    """

    def __init__(self, path: Path, max_length: int = DEFAULT_MAX_LENGTH,
                 device: str | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if not (path / "config.json").exists():
            raise ScorerError(f"{path}: not an encoder directory (no config.json)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ScorerError(f"{path}: cannot load the encoder: {exc}") from exc
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        # One forward pass at a time: torch already uses every core for one batch.
        self._lock = threading.Lock()

    def save(self, path: Path) -> None:
        """Write the encoder and its tokenizer to ``path`` (a bundle's ``encoder/``)."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``texts``: n strings -> float32 ``(n, h)``, unit rows."""
        from router.normalise import encode_for_classifier

        unique = sorted(set(texts), key=len)  # similar lengths per batch: less padding
        vectors: dict[str, np.ndarray] = {}
        for start in range(0, len(unique), batch_size):
            batch = unique[start:start + batch_size]
            encoded = encode_for_classifier(self.tokenizer, batch, self.max_length)
            inputs = self.tokenizer.pad(encoded, return_tensors="pt").to(self.device)
            with self._lock, self._torch.inference_mode():
                hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            pooled = self._torch.nn.functional.normalize(pooled, dim=-1)
            vectors.update(zip(batch, pooled.float().cpu().numpy(), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([vectors[text] for text in texts])


def tier_features(tiers: Sequence[str | None] | None, n: int) -> np.ndarray:
    """:data:`TIER_FEATURES` of n answers: one-hot ``(n, 3)``; a None tier is all zeros."""
    out = np.zeros((n, len(TIERS)))
    for i, tier in enumerate(() if tiers is None else tiers):
        if tier is not None:
            out[i, TIERS.index(tier)] = 1.0
    return out


def feature_width(dim: int) -> int:
    """Features per pair for an encoder of width ``dim``."""
    return 2 * dim + len(CHEAP_FEATURES) + len(TIER_FEATURES)


def pair_features(encoder: TextEncoder, prompts: Sequence[str], responses: Sequence[str],
                  tiers: Sequence[str | None] | None = None,
                  response_max_chars: int = DEFAULT_RESPONSE_MAX_CHARS) -> np.ndarray:
    """The scorer's features of n pairs: ``(n, 2h + 15)`` (see the module docstring)."""
    _check_pairs(prompts, responses, tiers)
    prompt_vectors = encoder.embed(list(prompts))
    response_vectors = encoder.embed([clean_response(r, response_max_chars) for r in responses])
    return np.hstack([prompt_vectors, response_vectors, cheap_features(prompts, responses),
                      tier_features(tiers, len(prompts))]).astype(np.float64)


def feature_names(dim: int) -> list[str]:
    """Names of the :func:`feature_width` features, in :func:`pair_features` order."""
    return ([f"prompt.{i}" for i in range(dim)] + [f"response.{i}" for i in range(dim)]
            + list(CHEAP_FEATURES) + list(TIER_FEATURES))


# --- the fitted parts: a logistic head and a calibration map ----------------------------------

def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(p, eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


@dataclass(frozen=True)
class LogisticHead:
    """``sigmoid(((x - mean) / scale) @ coef + intercept)``: shapes (d,), (d,), (d,), scalar."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``features`` (n, d) -> raw (uncalibrated) probabilities (n,)."""
        if features.shape[1] != len(self.coef):
            raise ScorerError(f"head expects {len(self.coef)} features, got {features.shape[1]}")
        return sigmoid(((features - self.mean) / self.scale) @ self.coef + self.intercept)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, coef=self.coef,
                 intercept=np.array([self.intercept]))

    @classmethod
    def load(cls, path: Path) -> LogisticHead:
        try:
            with np.load(path, allow_pickle=False) as data:
                head = cls(data["mean"], data["scale"], data["coef"], float(data["intercept"][0]))
        except (OSError, KeyError, ValueError, IndexError) as exc:
            raise ScorerError(f"{path}: not a scorer head (mean, scale, coef, intercept): "
                              f"{exc}") from exc
        shapes = {head.mean.shape, head.scale.shape, head.coef.shape}
        if len(shapes) != 1 or head.coef.ndim != 1 or np.any(head.scale <= 0):
            raise ScorerError(f"{path}: mean, scale and coef must be vectors of one length, "
                              "scale > 0")
        return head


def apply_calibration(raw: np.ndarray, calibration: dict[str, Any],
                      tiers: Sequence[str | None] | None = None) -> np.ndarray:
    """Map raw probabilities (n,) through a fitted calibration (see the module docstring).

    ``platt``: ``sigmoid(a * logit(raw) + b)``, with the tier's own ``a``, ``b`` where
    ``by_tier`` has the answer's tier (``tiers``: n tiers or None); ``isotonic``:
    piecewise-linear through the fitted ``(x, y)`` knots, constant beyond them; ``none``:
    unchanged.
    """
    method = calibration.get("method", "none")
    if method == "platt":
        a = np.full(len(raw), float(calibration["a"]))
        b = np.full(len(raw), float(calibration["b"]))
        by_tier = calibration.get("by_tier") or {}
        for i, tier in enumerate(() if tiers is None else tiers):
            if tier in by_tier:
                a[i], b[i] = float(by_tier[tier]["a"]), float(by_tier[tier]["b"])
        return sigmoid(a * logit(raw) + b)
    if method == "isotonic":
        return np.interp(raw, np.asarray(calibration["x"], dtype=float),
                         np.asarray(calibration["y"], dtype=float))
    if method == "none":
        return np.asarray(raw, dtype=float)
    raise ScorerError(f"unknown calibration method {method!r}; known: {CALIBRATION_METHODS}")


def _check_calibration(calibration: Any, where: Path) -> dict[str, Any]:
    if not isinstance(calibration, dict) or calibration.get("method") not in CALIBRATION_METHODS:
        raise ScorerError(f"{where}: calibration needs a method in {CALIBRATION_METHODS}")
    try:
        if calibration["method"] == "platt":
            by_tier = calibration.get("by_tier") or {}
            if set(by_tier) - set(TIERS):
                raise ValueError(f"by_tier keys {sorted(by_tier)} are not tiers {list(TIERS)}")
            values = [float(calibration["a"]), float(calibration["b"])] + [
                float(fit[key]) for fit in by_tier.values() for key in ("a", "b")]
        elif calibration["method"] == "isotonic":
            x = [float(v) for v in calibration["x"]]
            y = [float(v) for v in calibration["y"]]
            if len(x) != len(y) or not x or any(b < a for a, b in pairwise(x)):
                raise ValueError("x and y need equal non-zero lengths, x non-decreasing")
            values = x + y
        else:
            values = []
    except (KeyError, TypeError, ValueError) as exc:
        raise ScorerError(f"{where}: bad {calibration['method']} calibration: {exc}") from exc
    if not all(math.isfinite(v) for v in values):
        raise ScorerError(f"{where}: calibration values must be finite")
    return calibration


def read_meta(path: Path) -> ScorerMeta:
    """The bundle's ``scorer_model.json``, validated; raises :class:`ScorerError`."""
    meta_path = path / SCORER_META
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, this router reads {BUNDLE_FORMAT}")
        threshold = data.get("threshold")
        meta = ScorerMeta(version=str(data.get("version", path.name)),
                          threshold=None if threshold is None else float(threshold),
                          max_length=int(data.get("max_length", DEFAULT_MAX_LENGTH)),
                          response_max_chars=int(data.get("response_max_chars",
                                                          DEFAULT_RESPONSE_MAX_CHARS)),
                          calibration=_check_calibration(data.get("calibration"), meta_path))
    except OSError as exc:
        raise ScorerError(f"{path}: not a scorer bundle (cannot read {SCORER_META}: "
                          f"{exc.strerror or exc})") from exc
    except (ValueError, TypeError) as exc:
        raise ScorerError(f"{meta_path}: unreadable: {exc}") from exc
    if meta.threshold is not None and not 0.0 <= meta.threshold <= 1.0:
        raise ScorerError(f"{meta_path}: threshold must be in [0, 1], got {meta.threshold}")
    if meta.max_length < 8 or meta.response_max_chars < 16:
        raise ScorerError(f"{meta_path}: max_length >= 8 and response_max_chars >= 16 needed")
    return meta


class EmbeddingScorer:
    """A scorer bundle (see the module docstring), run in-process."""

    def __init__(self, path: Path, device: str | None = None) -> None:
        self.meta = read_meta(path)
        self.head = LogisticHead.load(path / HEAD_FILE)
        self.encoder = TextEncoder(path / ENCODER_DIR, self.meta.max_length, device)
        expected = feature_width(self.encoder.dim)
        if len(self.head.coef) != expected:
            raise ScorerError(f"{path}: head has {len(self.head.coef)} weights; encoder width "
                              f"{self.encoder.dim} needs {expected}")

    def raw(self, prompts: Sequence[str], responses: Sequence[str],
            tiers: Sequence[str | None] | None = None) -> np.ndarray:
        """Uncalibrated probabilities ``(n,)``."""
        if not prompts:
            _check_pairs(prompts, responses, tiers)
            return np.zeros(0)
        return self.head.predict(pair_features(self.encoder, prompts, responses, tiers,
                                               self.meta.response_max_chars))

    def score(self, prompts: list[str], responses: list[str],
              tiers: Sequence[str | None] | None = None) -> list[float]:
        return apply_calibration(self.raw(prompts, responses, tiers), self.meta.calibration,
                                 tiers).tolist()


def registered_scorer_dir(uri: str) -> Path:
    """Download ``models:/NAME@ALIAS`` (or ``/VERSION``) and return its scorer bundle folder
    (the pyfunc artifact ``scorer``; see :mod:`router.registry`)."""
    return registered_artifact_dir(uri, MLFLOW_ARTIFACT, ScorerError, "response-scorer")


def _fixed(rest: str) -> FixedScorer:
    try:
        return FixedScorer(float(rest))
    except ValueError:
        raise ScorerError(f"fixed scorer: {rest!r} is not a number") from None


# Registry: spec prefix -> factory taking the rest of the spec. A spec without a known prefix is
# a local bundle directory.
SCORER_BACKENDS: dict[str, Callable[[str], ResponseScorer]] = {
    "fixed": _fixed,
    "path": lambda rest: EmbeddingScorer(Path(rest)),
    "models": lambda rest: EmbeddingScorer(registered_scorer_dir(f"models:{rest}")),
}


def load_scorer(spec: str) -> ResponseScorer:
    """``fixed:P``, ``path:DIR``, ``models:/NAME@ALIAS`` or a bare bundle directory."""
    prefix, _, rest = spec.partition(":")
    if rest and prefix in SCORER_BACKENDS:
        return SCORER_BACKENDS[prefix](rest)
    path = Path(spec)
    if not path.is_dir():
        raise ScorerError(f"scorer {spec!r}: neither {', '.join(SCORER_BACKENDS)}:… nor a "
                          "bundle directory")
    return EmbeddingScorer(path)
