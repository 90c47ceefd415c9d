"""Response scorers for the cascade: P(a tier's answer is acceptable | prompt, answer, tier).

The cascade calls a tier, scores its answer and escalates when the check fails: the score is
below the operating point's ``score_threshold`` (:class:`router.gate.OperatingPoint`, fitted
jointly with the gate's other knobs by ``training.calibrate`` on a replay of the whole policy;
the config's ``cascade.score_threshold`` is only the default). The scorer stage fits no
threshold any more; ``meta.threshold`` is read from older bundles that carry one and is never
written. Scorers are chosen by a spec string through a registry, as classifiers are
(:mod:`router.classifier`):

* ``fixed:P``: always P in [0, 1] (tests, baselines).
* a local bundle directory, or ``path:DIR``: what training's ``scorer`` stage writes to
  ``models/scorer/`` (``training.calibrate`` loads it the same way to score validation answers
  in bulk).
* ``models:/response-scorer@champion`` (or ``/VERSION``): the bundle registered in MLflow
  (pyfunc artifact ``scorer``; tracking URI from MLflow's own setting, as for classifiers).

Bundle layout (loadable with numpy + transformers/tokenizers only: no pickles, no ``training``
import):

* ``scorer_model.json``: ``{"format": 2, "version", "encoder_kind": "transformer" | "static" |
  "none", "max_length", "response_max_chars", "calibration": {"method": "platt", "a", "b",
  ["by_tier": {tier: {"a", "b"}}]} | {"method": "isotonic", "x": [...], "y": [...]} |
  {"method": "none"}, ["threshold"]}``. Platt's ``by_tier`` maps answers of a known tier (the
  head shrinks the tier features, so the pooled map leaves the simple tier's answers ~0.08 ECE);
  answers of no stated tier use ``a``, ``b``. Format 1 bundles (no answer-structure features)
  are refused: retrain with ``make repro``. A format-2 meta without ``encoder_kind`` means
  ``transformer``.
* ``head.npz``: a logistic-regression head on standardised features: ``mean`` (d,), ``scale``
  (d,), ``coef`` (d,), ``intercept`` (1,).
* ``encoder/``: ``transformer``: a Hugging Face encoder (frozen all-MiniLM-L6-v2 by default) and
  its tokenizer, texts mean-pooled and L2-normalised; ``static``: a model2vec folder
  (``tokenizer.json`` + ``model.safetensors`` with ``embeddings`` (V, h)) read by
  :class:`router.classifier.StaticEncoder`, a text being the normalised mean of its token
  vectors; ``none``: absent (no embeddings at all). Both encoders keep a text's *end* (as the
  classifier does).

Features of one (prompt, response) pair, in this order: the prompt embedding (h), the response
embedding (h), :data:`CHEAP_FEATURES` (12), :data:`ANSWER_FEATURES` (7: the answer's structure,
:func:`answer_features`), then :data:`TIER_FEATURES` (3, one-hot of the tier whose model
answered; all zero when the caller does not say) -- d = 2h + 22 (h = 0 without an encoder).
Pass the tier: the default head is trained on tier-model answers only, so a tierless pair is off
its training distribution (and gets the pooled calibration). Pass the provider's
``finish_reason`` too: ``"length"`` marks a truncated answer.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import operator
import re
import shutil
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
# 2: ANSWER_FEATURES joined the feature vector and scorer_model.json gained encoder_kind.
BUNDLE_FORMAT = 2
DEFAULT_MAX_LENGTH = 128  # encoder tokens kept from the end of the prompt and of the response
# Characters of a response kept, counted from the end, before tokenizing: bounds tokenizer work
# on runaway answers (RouterBench has a 16k-character one); ~4 characters a token in English.
DEFAULT_RESPONSE_MAX_CHARS = 2048
# The pyfunc artifact holding the scorer bundle (training/register.py logs it).
MLFLOW_ARTIFACT = "scorer"
CALIBRATION_METHODS = ("platt", "isotonic", "none")
# What embeds the texts: a Hugging Face encoder (two forward passes a check), a static
# model2vec table (a lookup and a mean) or nothing (structure, cheap and tier features only).
ENCODER_KINDS = ("transformer", "static", "none")
# The files of a static (model2vec) folder that StaticEncoder reads, plus model2vec's config.
STATIC_FILES = ("tokenizer.json", "model.safetensors", "config.json")

# Cheap features of the response text (and the prompt's length), after the embeddings. Units:
# log_*: log(1 + count) of characters / whitespace words / non-empty lines (length: runaway or
# truncated answers go wrong more often, terse ones on open tasks too); short_answer,
# ends_with_number, states_answer, hedges ("not sure", "i think", ...: the model doubts its
# answer), refuses, has_code: 0/1; digit_share: digits / characters in [0, 1];
# repeated_lines: 1 - distinct / non-empty lines in [0, 1) (a degenerate loop).
CHEAP_FEATURES: tuple[str, ...] = (
    "log_prompt_chars", "log_response_chars", "log_response_words", "log_response_lines",
    "short_answer", "ends_with_number", "states_answer", "hedges", "refuses", "has_code",
    "digit_share", "repeated_lines")
# The answer's structure (answer_features), after CHEAP_FEATURES. Why (an outside study on the
# same seed data): on GSM8K a logistic model on a final answer being present, the <<a*b=c>>
# calculator annotations computing correctly, hedging, an integer result and length separated
# Mixtral's right and wrong answers at AUROC ~0.70-0.77, and embeddings added little on top.
ANSWER_FEATURES: tuple[str, ...] = (
    # 0/1: GSM8K's "####" final-answer marker appears (the format the model was asked for:
    # a model that lost the thread often never gets there).
    "hash_marker",
    # 0/1: a final answer can be extracted: "#### <number>", "the answer is X" / "Answer: X"
    # (a number or an option letter A-E), or the whole answer opening with an option letter.
    "final_answer",
    # 0/1: at least one <<expr=result>> calculator annotation.
    "annotations",
    # log(1 + count) of annotations whose expr evaluates to their result (2 decimals or 1e-6
    # relative): arithmetic that checks out; log, as the other counts, for long derivations.
    "log_annotations_correct",
    # 0/1: at least one annotation whose expr evaluates to something else: a slip that
    # usually propagates to the final answer.
    "annotation_wrong",
    # 0/1: the final numeric result (the extracted answer, else the answer's last number) is an
    # integer; GSM8K's answers all are, so a fractional one is a warning sign.
    "final_integer",
    # 0/1: the provider stopped at the token limit (finish_reason "length"); 0 when unknown.
    # The seed data records no finish_reason, so a head trained on it alone weights this 0.
    "truncated",
)
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

# --- answer structure: patterns and the safe arithmetic evaluator -----------------------------
# A number as answers write it: optional minus, thousands commas ("1,000"), decimals.
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_HASH_MARKER = re.compile(r"####")
_HASH_ANSWER = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
# "the answer is X", "The final answer is: $12", "Answer: (B)". The option letter is matched
# case-sensitively so that "the answer is a bit more" is no letter answer.
_ANSWER_IS = re.compile(
    r"\b(?:the\s+(?:final\s+|correct\s+)?answer\s+is|answer\s*:)\s*:?\s*[*_]*\s*"
    r"(?:\((?-i:([A-E]))\)|(?-i:([A-E]))(?![\w'])|\$?\s*(" + _NUMBER + "))", re.I)
# A whole answer that opens with an option letter: "C", "(B)", "A.", "D) 42" -- not "A robe".
_BARE_OPTION = re.compile(r"^(?:\(([A-E])\)|([A-E])(?=[.):]|$))")
_ANY_NUMBER = re.compile(_NUMBER)
_ANNOTATION = re.compile(r"<<([^<>]{0,200})>>")
_MAX_ANNOTATIONS = 64  # annotations checked per answer: bounds work on a degenerate loop
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# "3 x 4", "3x4", "(2)X(5)" and the sign U+00D7: a multiplication between operands.
_TIMES = re.compile(r"(?<=[\d).])\s*[xX\u00d7]\s*(?=[\d(.])")
_MAX_EXPR_CHARS = 120  # a calculator annotation is short; longer is not checked (parse cost)
_MAX_EXPONENT = 64  # |b| in a ** b; beyond it the value is refused before it is computed
_MAX_MAGNITUDE = 1e15  # any intermediate value beyond it: not a GSM8K calculation, refused
_MAX_DEPTH = 32  # nesting of the expression tree
_BINARY_OPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow}


class ScorerError(RouterError):
    """A response scorer could not be loaded or could not score a pair."""


class UncheckableExpressionError(ScorerError):
    """An annotation's expression is not plain bounded arithmetic: it is never evaluated."""


@dataclass(frozen=True)
class ScorerMeta:
    """What training stored with the scorer: version, encoder kind, text handling, calibration.

    ``threshold``: read from bundles that carry one, never written by the stage any more: the
    operating point's ``score_threshold`` (``training.calibrate``) applies."""

    version: str
    threshold: float | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    response_max_chars: int = DEFAULT_RESPONSE_MAX_CHARS
    calibration: dict[str, Any] = field(default_factory=lambda: {"method": "none"})
    encoder_kind: str = "transformer"


class ResponseScorer(Protocol):
    """Scores answers: the probability that each response answers its prompt acceptably."""

    meta: ScorerMeta

    def score(self, prompts: list[str], responses: list[str],
              tiers: Sequence[str | None] | None = None,
              finish_reasons: Sequence[str | None] | None = None) -> list[float]:
        """``prompts``: n normalised requests (:func:`router.normalise.normalise`),
        ``responses``: their n answers, ``tiers``: the tier that answered each, ``finish_reasons``:
        the provider's finish_reason of each (None: not known, for the list or one value) -> n
        probabilities in [0, 1]. Raises :class:`ScorerError` on lengths that disagree."""
        ...


class FixedScorer:
    """Always ``p`` (baselines, and tests that must not depend on a model)."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ScorerError(f"fixed scorer: {p!r} is not a probability in [0, 1]")
        self.p = p
        self.meta = ScorerMeta(version=f"fixed:{p:g}", encoder_kind="none")

    def score(self, prompts: list[str], responses: list[str],
              tiers: Sequence[str | None] | None = None,
              finish_reasons: Sequence[str | None] | None = None) -> list[float]:
        _check_pairs(prompts, responses, tiers, finish_reasons)
        return [self.p] * len(prompts)


def _check_pairs(prompts: Sequence[str], responses: Sequence[str],
                 tiers: Sequence[str | None] | None = None,
                 finish_reasons: Sequence[str | None] | None = None) -> None:
    if len(prompts) != len(responses):
        raise ScorerError(f"{len(prompts)} prompts but {len(responses)} responses")
    if tiers is not None:
        if len(tiers) != len(prompts):
            raise ScorerError(f"{len(prompts)} prompts but {len(tiers)} tiers")
        unknown = sorted({str(t) for t in tiers if t is not None and t not in TIERS})
        if unknown:
            raise ScorerError(f"tiers {unknown} are not tiers {list(TIERS)} (or None)")
    if finish_reasons is not None:
        if len(finish_reasons) != len(prompts):
            raise ScorerError(f"{len(prompts)} prompts but {len(finish_reasons)} "
                              "finish_reasons")
        bad = sorted({repr(r) for r in finish_reasons if r is not None and not isinstance(r, str)})
        if bad:
            raise ScorerError(f"finish_reasons {bad} are not strings (or None)")


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


def _bounded(value: float) -> float:
    if not math.isfinite(value) or abs(value) > _MAX_MAGNITUDE:
        raise UncheckableExpressionError(f"value {value!r} is beyond {_MAX_MAGNITUDE:g}")
    return value


def _arithmetic(node: ast.AST, depth: int) -> float:
    """The value of one node of a parsed expression: numbers, + - * / // % **, unary minus."""
    if depth > _MAX_DEPTH:
        raise UncheckableExpressionError("expression nested too deeply")
    if isinstance(node, ast.Constant):
        # bool is an int subclass; complex ("2j") and strings are not arithmetic here.
        if type(node.value) not in (int, float):
            raise UncheckableExpressionError(f"constant {node.value!r} is not a number")
        return _bounded(float(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arithmetic(node.operand, depth + 1)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _arithmetic(node.left, depth + 1)
        right = _arithmetic(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            if abs(right) > _MAX_EXPONENT:
                raise UncheckableExpressionError(f"exponent {right:g} is beyond {_MAX_EXPONENT}")
            if left < 0 and not right.is_integer():
                raise UncheckableExpressionError("fractional power of a negative number")
        try:
            value = _BINARY_OPS[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as exc:  # division by zero, float overflow
            raise UncheckableExpressionError(f"{type(exc).__name__}: {exc}") from None
        return _bounded(value)
    raise UncheckableExpressionError(f"{type(node).__name__} is not plain arithmetic")


def safe_arithmetic(expr: str) -> float:
    """The value of ``expr``: numbers, ``+ - * / // % **``, unary minus and parentheses only.

    Parsed with :mod:`ast` and walked node by node -- never ``eval``: names, calls, attributes,
    subscripts and every other node are refused, as are exponents beyond 64, values beyond
    1e15 and expressions over 120 characters. Raises :class:`UncheckableExpressionError`."""
    text = expr.strip()
    if not text or len(text) > _MAX_EXPR_CHARS:
        raise UncheckableExpressionError(f"expression of {len(text)} characters (1-"
                                    f"{_MAX_EXPR_CHARS} checked)")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UncheckableExpressionError(f"not an expression: {type(exc).__name__}") from None
    return _arithmetic(tree.body, 0)


def _as_number(text: str) -> float | None:
    """``"1,000"``, ``"$24."``, ``"-3.5"`` -> a float; anything else None."""
    cleaned = _THOUSANDS.sub("", text.strip().replace("$", "")).rstrip(".").strip()
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def check_annotation(body: str) -> bool | None:
    """One calculator annotation's inside, ``"48/2=24"``: True when the expression evaluates to
    the stated result (equal after rounding both to 2 decimals, or within 1e-6 relative), False
    when to something else, None when it cannot be checked (no ``=``, a result that is not a
    number, an expression :func:`safe_arithmetic` refuses)."""
    expr, equals, result_text = body.rpartition("=")
    if not equals:
        return None
    result = _as_number(result_text)
    if result is None:
        return None
    expr = _THOUSANDS.sub("", expr.replace("$", "").replace("÷", "/"))
    expr = _TIMES.sub("*", expr).strip().rstrip(".")
    try:
        value = safe_arithmetic(expr)
    except UncheckableExpressionError:
        return None
    return (abs(round(value, 2) - round(result, 2)) < 1e-9
            or abs(value - result) <= 1e-6 * max(abs(value), abs(result)))


def final_answer(response: str) -> str | None:
    """The answer's extractable final answer, as written (``"72"``, ``"B"``), or None: the last
    ``#### <number>``, else the last "the answer is X" / "Answer: X" (a number or an option
    letter), else an option letter opening the whole answer."""
    text = (response or "").strip()
    hashes = _HASH_ANSWER.findall(text)
    if hashes:
        return hashes[-1]
    stated = _ANSWER_IS.findall(text)
    if stated:
        return next(part for part in stated[-1] if part)
    bare = _BARE_OPTION.match(text)
    return next(part for part in bare.groups() if part) if bare else None


def answer_features(responses: Sequence[str],
                    finish_reasons: Sequence[str | None] | None = None) -> np.ndarray:
    """:data:`ANSWER_FEATURES` of n raw responses (and their providers' finish_reasons, None
    when not known): float array ``(n, 7)``."""
    if finish_reasons is not None and len(finish_reasons) != len(responses):
        raise ScorerError(f"{len(responses)} responses but {len(finish_reasons)} "
                          "finish_reasons")
    out = np.zeros((len(responses), len(ANSWER_FEATURES)))
    for i, response in enumerate(responses):
        text = (response or "").strip()
        checks = [check_annotation(body)
                  for body in _ANNOTATION.findall(text)[:_MAX_ANNOTATIONS]]
        answer = final_answer(text)
        value = _as_number(answer) if answer is not None else None
        if value is None:  # no numeric final answer: the answer's last number stands for it
            numbers = _ANY_NUMBER.findall(text)
            value = _as_number(numbers[-1]) if numbers else None
        reason = finish_reasons[i] if finish_reasons is not None else None
        out[i] = (
            float(bool(_HASH_MARKER.search(text))),
            float(answer is not None),
            float(bool(checks)),
            math.log1p(sum(check is True for check in checks)),
            float(any(check is False for check in checks)),
            float(value is not None and value.is_integer()),
            float(reason == "length"),
        )
    return out


class Embedder(Protocol):
    """What embeds the scorer's texts: ``kind`` (one of :data:`ENCODER_KINDS`), ``dim`` (h)."""

    kind: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``texts``: n strings -> float32 ``(n, h)``, unit rows (h may be 0)."""
        ...

    def save(self, path: Path) -> None:
        """Write what :func:`load_encoder` reads back from ``path`` (a bundle's ``encoder/``)."""
        ...


class TextEncoder:
    """A frozen Hugging Face encoder: texts -> mean-pooled, L2-normalised embeddings ``(n, h)``.

    Texts longer than ``max_length`` tokens keep their end
    (:func:`router.normalise.encode_for_classifier`). Identical texts are embedded once.
    """

    kind = "transformer"

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


class StaticTextEncoder:
    """A static model2vec folder through :class:`router.classifier.StaticEncoder`: a text is the
    L2-normalised mean of its last ``max_length`` tokens' vectors, float32 ``(n, h)``. No
    forward pass: ~0.2 ms a check instead of a transformer's 15-30 ms on this CPU."""

    kind = "static"

    def __init__(self, path: Path, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        from router.classifier import ClassifierError, StaticEncoder

        try:
            self._encoder = StaticEncoder(path, max_length)
        except ClassifierError as exc:
            raise ScorerError(str(exc)) from exc
        self.path = path
        self.max_length = max_length
        self.dim = int(self._encoder.dim)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``texts``: n strings -> float32 ``(n, h)``, unit rows (all-zero for a text with no
        known token)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encoder.encode(list(texts))

    def save(self, path: Path) -> None:
        """Copy the folder's files (:data:`STATIC_FILES` that exist) to ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        for name in STATIC_FILES:
            if (self.path / name).exists():
                shutil.copy2(self.path / name, path / name)


class NoEncoder:
    """No embeddings (h = 0): the head sees the cheap, answer-structure and tier features only."""

    kind = "none"
    dim = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), 0), dtype=np.float32)

    def save(self, path: Path) -> None:
        """Nothing to write: a ``none`` bundle has no ``encoder/``."""


def load_encoder(kind: str, path: Path | None, max_length: int = DEFAULT_MAX_LENGTH,
                 device: str | None = None) -> Embedder:
    """The :data:`ENCODER_KINDS` ``kind`` read from ``path`` (a Hugging Face encoder directory,
    a model2vec folder, or nothing for ``none``); raises :class:`ScorerError`."""
    if kind == "none":
        return NoEncoder()
    if path is None:
        raise ScorerError(f"a {kind} encoder needs a folder")
    if kind == "transformer":
        return TextEncoder(path, max_length, device)
    if kind == "static":
        return StaticTextEncoder(path, max_length)
    raise ScorerError(f"unknown encoder kind {kind!r}; known: {ENCODER_KINDS}")


def tier_features(tiers: Sequence[str | None] | None, n: int) -> np.ndarray:
    """:data:`TIER_FEATURES` of n answers: one-hot ``(n, 3)``; a None tier is all zeros."""
    out = np.zeros((n, len(TIERS)))
    for i, tier in enumerate(() if tiers is None else tiers):
        if tier is not None:
            out[i, TIERS.index(tier)] = 1.0
    return out


def feature_width(dim: int) -> int:
    """Features per pair for an encoder of width ``dim`` (0: no encoder)."""
    return 2 * dim + len(CHEAP_FEATURES) + len(ANSWER_FEATURES) + len(TIER_FEATURES)


def pair_features(encoder: Embedder, prompts: Sequence[str], responses: Sequence[str],
                  tiers: Sequence[str | None] | None = None,
                  response_max_chars: int = DEFAULT_RESPONSE_MAX_CHARS,
                  finish_reasons: Sequence[str | None] | None = None) -> np.ndarray:
    """The scorer's features of n pairs: ``(n, 2h + 22)`` (see the module docstring)."""
    _check_pairs(prompts, responses, tiers, finish_reasons)
    prompt_vectors = encoder.embed(list(prompts))
    response_vectors = encoder.embed([clean_response(r, response_max_chars) for r in responses]
                                     if encoder.dim else list(responses))
    return np.hstack([prompt_vectors, response_vectors, cheap_features(prompts, responses),
                      answer_features(responses, finish_reasons),
                      tier_features(tiers, len(prompts))]).astype(np.float64)


def feature_names(dim: int) -> list[str]:
    """Names of the :func:`feature_width` features, in :func:`pair_features` order."""
    return ([f"prompt.{i}" for i in range(dim)] + [f"response.{i}" for i in range(dim)]
            + list(CHEAP_FEATURES) + list(ANSWER_FEATURES) + list(TIER_FEATURES))


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
    """The bundle's ``scorer_model.json``, validated; raises :class:`ScorerError` (a format-1
    bundle too: it predates the answer-structure features)."""
    meta_path = path / SCORER_META
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") == 1:
            raise ScorerError(f"{meta_path}: a format-1 scorer bundle (no answer-structure "
                              f"features, no encoder_kind); this router reads format "
                              f"{BUNDLE_FORMAT}: retrain with make repro")
        if data.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, this router reads {BUNDLE_FORMAT}")
        threshold = data.get("threshold")
        meta = ScorerMeta(version=str(data.get("version", path.name)),
                          threshold=None if threshold is None else float(threshold),
                          max_length=int(data.get("max_length", DEFAULT_MAX_LENGTH)),
                          response_max_chars=int(data.get("response_max_chars",
                                                          DEFAULT_RESPONSE_MAX_CHARS)),
                          calibration=_check_calibration(data.get("calibration"), meta_path),
                          encoder_kind=str(data.get("encoder_kind", "transformer")))
    except OSError as exc:
        raise ScorerError(f"{path}: not a scorer bundle (cannot read {SCORER_META}: "
                          f"{exc.strerror or exc})") from exc
    except (ValueError, TypeError) as exc:
        raise ScorerError(f"{meta_path}: unreadable: {exc}") from exc
    if meta.encoder_kind not in ENCODER_KINDS:
        raise ScorerError(f"{meta_path}: encoder_kind {meta.encoder_kind!r} is not one of "
                          f"{ENCODER_KINDS}")
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
        encoder_dir = None if self.meta.encoder_kind == "none" else path / ENCODER_DIR
        self.encoder: Embedder = load_encoder(self.meta.encoder_kind, encoder_dir,
                                              self.meta.max_length, device)
        expected = feature_width(self.encoder.dim)
        if len(self.head.coef) != expected:
            raise ScorerError(f"{path}: head has {len(self.head.coef)} weights; a "
                              f"{self.meta.encoder_kind} encoder of width {self.encoder.dim} "
                              f"needs {expected}")

    def raw(self, prompts: Sequence[str], responses: Sequence[str],
            tiers: Sequence[str | None] | None = None,
            finish_reasons: Sequence[str | None] | None = None) -> np.ndarray:
        """Uncalibrated probabilities ``(n,)``."""
        if not prompts:
            _check_pairs(prompts, responses, tiers, finish_reasons)
            return np.zeros(0)
        return self.head.predict(pair_features(self.encoder, prompts, responses, tiers,
                                               self.meta.response_max_chars, finish_reasons))

    def score(self, prompts: list[str], responses: list[str],
              tiers: Sequence[str | None] | None = None,
              finish_reasons: Sequence[str | None] | None = None) -> list[float]:
        return apply_calibration(self.raw(prompts, responses, tiers, finish_reasons),
                                 self.meta.calibration, tiers).tolist()


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
