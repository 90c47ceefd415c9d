"""The simulated latency of one call: a documented per-model model, not a measurement.

latency = time to first token + output tokens x time per output token, the first term scaled by
a log-normal jitter drawn from a seed of (request, deployment), so a replay is reproducible and
two providers of the same model differ a little. Profiles are assumptions in the range public
throughput dashboards showed for these models in early 2024; change them here, in one place.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyProfile:
    ttft_ms: float  # time to first token, milliseconds
    ms_per_token: float  # per output token, milliseconds
    jitter_sigma: float = 0.25  # log-normal sigma applied to the time to first token


PROFILES: dict[str, LatencyProfile] = {
    "gpt-4-1106-preview": LatencyProfile(ttft_ms=650.0, ms_per_token=22.0),
    "zero-one-ai/Yi-34B-Chat": LatencyProfile(ttft_ms=350.0, ms_per_token=14.0),
    "mistralai/mixtral-8x7b-chat": LatencyProfile(ttft_ms=250.0, ms_per_token=10.0),
}
DEFAULT_PROFILE = LatencyProfile(ttft_ms=400.0, ms_per_token=15.0)


def profile_for(model: str) -> LatencyProfile:
    """The profile of ``model``, matched case-insensitively, else :data:`DEFAULT_PROFILE`."""
    lowered = {name.lower(): profile for name, profile in PROFILES.items()}
    return lowered.get(model.lower(), DEFAULT_PROFILE)


@dataclass(frozen=True)
class SimulatedLatency:
    ttft_ms: float
    total_ms: float


def simulate_latency(model: str, output_tokens: int, seed: str) -> SimulatedLatency:
    """Latency of one call of ``model`` producing ``output_tokens``; ``seed`` fixes the jitter."""
    profile = profile_for(model)
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    # Mean-one log-normal, so the profile's ttft is also the average.
    jitter = math.exp(rng.gauss(-profile.jitter_sigma**2 / 2, profile.jitter_sigma))
    ttft = profile.ttft_ms * jitter
    return SimulatedLatency(ttft_ms=ttft, total_ms=ttft + output_tokens * profile.ms_per_token)
