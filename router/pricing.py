"""Expected prices: what a request is expected to cost at each tier, before any call is made.

The decision rule (:mod:`router.gate`) weighs each tier's success probability against this
price. It is an *expectation*: the configured per-token prices of the tier's deployments times

* the request's prompt tokens, estimated from its characters (:func:`estimate_tokens`: one
  function for training, the benchmark and the service, so all three price a request alike; a
  real tokenizer would cost the request path ~1 ms on a long prompt for a 10% better count), and
* the tier's expected output tokens for requests like this one, learned from data and stored with
  the model version (the neighbourhood table, :mod:`router.neighbourhood`): GPT-4 writes ~300
  tokens for a MBPP task and ~4 for a multiple-choice letter.

What a call *actually* costs is LiteLLM's ``response_cost`` (deployment prices x the provider's
usage tokens); the benchmark charges that, never this estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from router.config import RouterConfig
from router.tiers import TIERS, Tier

# English averages ~4 characters per BPE token (Qwen's tokenizer: 4.2 on the seed prompts).
CHARS_PER_TOKEN = 4.0


def estimate_tokens(chars: int | float) -> float:
    """Tokens of a text of ``chars`` characters (at least 1 for a non-empty text)."""
    return 0.0 if chars <= 0 else max(1.0, math.ceil(chars / CHARS_PER_TOKEN))


def prompt_chars(contents: Iterable[str]) -> int:
    """Characters of a request's message texts (every turn, system prompt included)."""
    return sum(len(text) for text in contents)


def tier_prices(config: RouterConfig) -> dict[Tier, tuple[float, float]]:
    """Mean (input, output) USD per token over each tier's deployments: the price LiteLLM's
    shuffle over same-tier providers charges on average."""
    prices: dict[Tier, tuple[float, float]] = {}
    for tier in TIERS:
        deployments = config.deployments(tier)
        prices[tier] = (
            float(np.mean([d.litellm_params.input_cost_per_token for d in deployments])),
            float(np.mean([d.litellm_params.output_cost_per_token for d in deployments])))
    return prices


def price_matrix(prices: Mapping[Tier, tuple[float, float]]) -> np.ndarray:
    """``prices`` as a (2, 3) array: row 0 input, row 1 output USD per token, TIERS order."""
    return np.array([[prices[tier][k] for tier in TIERS] for k in (0, 1)], dtype=float)


def expected_prices(prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                    prices: np.ndarray) -> np.ndarray:
    """Expected USD per row and tier: ``prompt_tokens`` (n,) x input price + ``output_tokens``
    (n, 3) x output price; ``prices`` from :func:`price_matrix`. Returns (n, 3)."""
    prompt_tokens = np.asarray(prompt_tokens, dtype=float).reshape(-1, 1)
    return prompt_tokens * prices[0][None, :] + np.asarray(output_tokens, dtype=float) \
        * prices[1][None, :]
