"""Provider simulator: a STAND-IN for hosted LLM providers (see simulator/app.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from router.config import RouterConfig
from simulator.app import (
    BackgroundServer,
    FailMode,
    Simulator,
    SimulatorError,
    create_app,
    parse_fail_spec,
)
from simulator.catalog import Answer, AnswerCatalog, prompt_key
from workloads import OUTCOME_WORKLOADS, load_workload


def build_simulator(config: RouterConfig, *, workloads: Sequence[str] = OUTCOME_WORKLOADS,
                    data_dir: Path | None = None, fail_specs: Sequence[str] = (),
                    latency_scale: float = 1.0, hang_s: float = 120.0,
                    seed: int = 0, judge_invalid_rate: float = 0.1) -> Simulator:
    """A simulator for ``config``'s deployments, answering from ``workloads`` (names or paths)."""
    if latency_scale < 0:
        raise SimulatorError(f"latency scale must be >= 0, got {latency_scale}")
    if not 0.0 <= judge_invalid_rate <= 1.0:
        raise SimulatorError(f"judge invalid rate must be in [0, 1], got {judge_invalid_rate}")
    catalog = AnswerCatalog([load_workload(name, data_dir) for name in workloads])
    return Simulator(config, catalog, failures=dict(parse_fail_spec(s) for s in fail_specs),
                     latency_scale=latency_scale, hang_s=hang_s, seed=seed,
                     judge_invalid_rate=judge_invalid_rate)


__all__ = [
    "OUTCOME_WORKLOADS",
    "Answer",
    "AnswerCatalog",
    "BackgroundServer",
    "FailMode",
    "Simulator",
    "SimulatorError",
    "build_simulator",
    "create_app",
    "parse_fail_spec",
    "prompt_key",
]
