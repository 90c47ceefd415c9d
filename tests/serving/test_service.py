"""The BentoML service end to end: `bentoml serve` on 127.0.0.1 in front of the simulator, tiny
classifiers registered in a throwaway MLflow store, the official `openai` client."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from router.config import RouterConfig
from router.telemetry import DecisionLog
from serving.settings import hash_key
from tests import openai_spec
from tests.conftest import OPERATING_POINT, REPO, ServiceProcess, SimulatorProcess
from tests.router.pg import PostgresServer

KEY_A, KEY_B = "sk-test-tenant-a-0123456789", "sk-test-tenant-b-9876543210"
MODEL = "tier-classifier"
# Head-only calibration biases (format-2 bundles, TIERS order) on the untrained tiny BERT: v1 is
# ~sure only simple's answer is acceptable (sigmoid(6) ~ 0.998 there, ~0.002 elsewhere), v2 only
# critical's. Their stored operating point buys the likeliest answer whatever it costs and never
# escalates, so v1 routes everything to simple and v2 everything to critical.
BIASES = {"1": [6.0, -6.0, -6.0], "2": [-6.0, -6.0, 6.0]}
POINT = {"price_weight": 0.0, "trust": 0.0, "escalate": 0.0, "score_threshold": 0.5,
         "escalation_weight": 0.0}


def _bundle_meta(version: str, bias: list[float]) -> dict:
    return {"format": 2, "version": version, "backend": "transformer", "head": "per_tier",
            "head_only": {"head": [1.0, 1.0, 1.0], "prior": [0.0, 0.0, 0.0], "bias": bias},
            "operating_point": POINT}


def _register(tiny_bert_dir: Path, tiny_static_dir: Path, root: Path,
              tracking_uri: str) -> dict[str, str]:
    """Three versions under ``MODEL``: the two tiny BERTs above and (v3) the tiny static bundle
    with its neighbourhood table and stored point; champion -> v1. {version: meta version}."""
    import mlflow
    from mlflow import MlflowClient

    from training.register import MLFLOW_ARTIFACT, _pyfunc_class

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("service-test",
                                          artifact_location=(root / "artifacts").as_uri())
    bundles = []
    for number, bias in BIASES.items():
        bundle = root / f"bundle-{number}"
        shutil.copytree(tiny_bert_dir, bundle)
        (bundle / "router_model.json").write_text(json.dumps(_bundle_meta(f"tiny-{number}",
                                                                          bias)))
        bundles.append((bundle, f"tiny-{number}"))
    bundles.append((tiny_static_dir, "tiny-static"))
    versions = {}
    for bundle, meta in bundles:
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.pyfunc.log_model(name="model", python_model=_pyfunc_class()(),
                                    artifacts={MLFLOW_ARTIFACT: str(bundle)})
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", MODEL).version
        versions[str(version)] = meta
    MlflowClient().set_registered_model_alias(MODEL, "champion", "1")
    return versions


@dataclass
class Registry:
    root: Path
    tracking_uri: str
    keys: Path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path,
             tiny_static_dir: Path) -> Registry:
    root = tmp_path_factory.mktemp("service")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    assert _register(tiny_bert_dir, tiny_static_dir, root, tracking_uri) == {
        "1": "tiny-1", "2": "tiny-2", "3": "tiny-static"}
    keys = root / "api-keys"
    keys.write_text(f"# sha256(key) tenant\n{hash_key(KEY_A)} tenant-a\n"
                    f"{hash_key(KEY_B)} tenant-b\n")
    return Registry(root, tracking_uri, keys)


def _start(registry: Registry, simulator: SimulatorProcess, name: str,
           **env: str) -> ServiceProcess:
    folder = registry.root / name
    folder.mkdir()
    process = ServiceProcess({
        "ROUTER_CLASSIFIER": f"models:/{MODEL}@champion", "ROUTER_SCORER": "none",
        "MLFLOW_TRACKING_URI": registry.tracking_uri, "ROUTER_RELOAD_INTERVAL_S": "0.5",
        "ROUTER_API_KEYS": str(registry.keys), "ROUTER_PROVIDER_BASE": simulator.root,
        "ROUTER_DECISION_LOG_URL": f"sqlite:///{folder / 'decisions.sqlite'}",
        "ROUTER_CACHE_DIR": str(folder / "cache"), "BENTOML_HOME": str(folder / "bentoml"),
        **env}, folder / "service.log")
    process.tracking_uri = registry.tracking_uri  # type: ignore[attr-defined]
    process.decisions_url = f"sqlite:///{folder / 'decisions.sqlite'}"  # type: ignore[attr-defined]
    return process


@pytest.fixture(scope="module")
def service(registry: Registry, simulator: SimulatorProcess) -> Iterator[ServiceProcess]:
    """The service on the embedded cache and SQLite decision log."""
    process = _start(registry, simulator, "embedded")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def shared_cache_service(registry: Registry, simulator: SimulatorProcess,
                         chroma_server) -> Iterator[ServiceProcess]:
    """The service on the shared cache backend (a real Chroma server)."""
    process = _start(registry, simulator, "chroma", ROUTER_CACHE_URL=chroma_server.url)
    yield process
    process.stop()


def _client(service: ServiceProcess, key: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{service.root}/v1", api_key=key, max_retries=0)


def _post(service: ServiceProcess, key: str | None, body: dict, path: str = "chat/completions"
          ) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{service.root}/v1/{path}", json=body, headers=headers, timeout=60)


def _ask(text: str, model: str = "auto") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def test_openai_client_gets_plain_and_streamed_answers(service: ServiceProcess) -> None:
    client = _client(service, KEY_A)
    answer = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "What is the capital of Peru?"}])
    assert answer.choices[0].message.content
    assert answer.model_extra["router"]["final_tier"] == "simple"  # v1 routes to simple
    chunks = list(client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Name three rivers in Asia."}],
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens > 0
    models = {m.id for m in client.models.list()}
    assert {"auto", "simple", "medium", "critical", "gpt-4-1106-preview"} <= models


def test_raw_responses_and_chunks_validate_against_the_openai_spec(
        service: ServiceProcess) -> None:
    plain = _post(service, KEY_A, _ask("How many legs does a spider have?"))
    assert plain.status_code == 200, plain.text
    body = plain.json()
    routing = body.pop("router")  # the one extra field; the rest is OpenAI's schema
    openai_spec.validate(body, "CreateChatCompletionResponse")
    assert plain.headers["x-router-request-id"] == routing["request_id"]
    assert plain.headers["x-router-tier"] == routing["target_tier"]
    # The second stream of the same question is an exact cache hit, replayed as a stream.
    for expected_cache in ("miss", "exact"):
        with httpx.stream("POST", f"{service.root}/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {KEY_A}"},
                          json={**_ask("Spell 'cat' backwards."), "stream": True,
                                "stream_options": {"include_usage": True}}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-router-cache"] == expected_cache
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and len(events) > 2
        chunks = [json.loads(event) for event in events[:-1]]
        for chunk in chunks:
            openai_spec.validate(chunk, "CreateChatCompletionStreamResponse")
        assert "usage" in chunks[-1] and not chunks[-1]["choices"]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                       if c["choices"])
        if expected_cache == "miss":
            streamed = text
    assert text == streamed  # the cached replay says what the provider said
    openai_spec.validate(httpx.get(f"{service.root}/v1/models", headers={
        "Authorization": f"Bearer {KEY_A}"}).json(), "ListModelsResponse")


def test_decisions_reach_the_log_and_metrics(service: ServiceProcess) -> None:
    ids = [_post(service, KEY_B, _ask(f"Log me number {i}")).headers["x-router-request-id"]
           for i in range(3)]
    with DecisionLog(service.decisions_url) as log:  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = {r.request_id: r for r in log.read(tenant="tenant-b")}
            if set(ids) <= set(rows):
                break
            time.sleep(0.2)
    assert set(ids) <= set(rows)
    assert {rows[i].final_tier for i in ids} == {"simple"}
    assert all(rows[i].status == "ok" and rows[i].cost_usd > 0 for i in ids)
    metrics = httpx.get(f"{service.root}/metrics").text
    assert 'tier_router_requests_total{final_tier="simple"' in metrics


def test_auth_and_bad_requests_are_clear_errors(service: ServiceProcess) -> None:
    for key in (None, "sk-unknown"):
        response = _post(service, key, _ask("hi"))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    bad = httpx.post(f"{service.root}/v1/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {KEY_A}"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    empty = _post(service, KEY_A, {"model": "auto", "messages": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    unknown = _post(service, KEY_A, _ask("hi", model="gpt-17"))
    assert unknown.status_code == 400 and "unknown model" in unknown.json()["error"]["message"]
    assert httpx.get(f"{service.root}/healthz").status_code == 200


def test_route_endpoint_decides_without_answering(service: ServiceProcess) -> None:
    response = _post(service, KEY_A, _ask("Prove Fermat's last theorem."), path="route")
    assert response.status_code == 200
    decision = response.json()
    assert decision["target_tier"] == "simple" and "choices" not in decision
    assert decision["scores"]["simple"] > 0.99 > 0.01 > decision["scores"]["critical"]
    # The operating point stored with v1, and the prices the rule weighed.
    assert decision["thresholds"] == POINT
    assert decision["threshold_source"] == "model:tiny-1"
    prices = decision["expected_cost_usd"]
    assert set(prices) == {"simple", "medium", "critical"}
    # critical's list price is 10-30 USD per 1M tokens against simple's 0.5-0.6
    assert prices["critical"] > 10 * prices["simple"] > 0
    assert decision["neighbourhood"] is None  # a transformer bundle without a table


def test_service_check_reports_who_answered_and_agrees_with_the_library(
        service: ServiceProcess, router_config: RouterConfig) -> None:
    """``tier-router service-check``'s core on the champion v1, which is ~sure only simple's
    answer is acceptable at price weight 0: every Banking77 query answered by simple, and the
    library's own decision on the same requests names the same tier."""
    import mlflow

    from bench.service_check import check, draw_test_queries
    from router.classifier import load_classifier
    from workloads import load_workload

    mlflow.set_tracking_uri(service.tracking_uri)  # type: ignore[attr-defined]
    records = draw_test_queries(list(load_workload("banking77").records), 12, seed=3)
    assert len(records) == 12 and all(".test." in r.id for r in records)
    report = check(service.root, KEY_A, records, router_config,
                   load_classifier(f"models:/{MODEL}/1"))
    assert report["requests"] == 12
    assert report["final_tier_share"] == {"simple": 1.0, "medium": 0.0, "critical": 0.0}
    assert report["answered_by_critical"] == 0.0 and report["escalated"] == 0.0
    assert report["service_vs_library_same_tier"] == 1.0
    assert report["demo_prompt"]["final_tier"] == "simple"
    assert report["cost_per_task_usd"] > 0


@pytest.mark.parametrize("backend", ["embedded", "chroma"])
def test_tenants_never_share_cached_answers_and_feedback_evicts(
        backend: str, request: pytest.FixtureRequest) -> None:
    service = request.getfixturevalue("service" if backend == "embedded"
                                      else "shared_cache_service")
    question = _ask("What is the boiling point of water at sea level in Celsius?")
    first = _post(service, KEY_A, question)
    again = _post(service, KEY_A, question)
    assert (first.headers["x-router-cache"], again.headers["x-router-cache"]) == ("miss",
                                                                                 "exact")
    other = _post(service, KEY_B, question)
    assert other.headers["x-router-cache"] == "miss"  # tenant B never gets A's answer
    hit_id = again.headers["x-router-request-id"]
    # B cannot attach feedback to A's request: it looks like an unknown one.
    refused = _post(service, KEY_B, {"request_id": hit_id, "rating": "negative"}, "feedback")
    assert refused.status_code == 404
    given = _post(service, KEY_A, {"request_id": hit_id, "rating": "negative",
                                   "comment": "wrong"}, "feedback")
    assert given.status_code == 200 and given.json()["cache_entries_evicted"]
    # Chroma entry ids name their collection: proof the shared backend served the hit.
    shared = given.json()["cache_entries_evicted"][0].startswith("trc-")
    assert shared == (backend == "chroma")
    assert _post(service, KEY_A, question).headers["x-router-cache"] == "miss"
    bad = _post(service, KEY_A, {"request_id": hit_id, "rating": "meh"}, "feedback")
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["message"]


def test_moving_the_champion_alias_switches_models_without_a_restart(
        service: ServiceProcess) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=service.tracking_uri)  # type: ignore[attr-defined]

    def served_after_alias(version: str) -> httpx.Response:
        client.set_registered_model_alias(MODEL, "champion", version)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = _post(service, KEY_A, _ask("Which tier am I?"), path="route")
            if response.headers.get("x-router-model-version") == version:
                return response
            time.sleep(0.25)
        raise AssertionError(f"alias moved to v{version} but the service still serves "
                             f"{response.headers.get('x-router-model-version')}")

    pid = service.proc.pid
    try:
        assert served_after_alias("2").json()["target_tier"] == "critical"
        answered = _post(service, KEY_A, _ask("And now?"))
        assert answered.json()["router"]["final_tier"] == "critical"
        # v3, a static bundle: its neighbourhood explains the decision, its own point applies.
        static = served_after_alias("3").json()
        assert static["threshold_source"] == "model:tiny-static"
        assert {k: static["thresholds"][k] for k in OPERATING_POINT} == OPERATING_POINT
        hood = static["neighbourhood"]
        # the fixture's table: 4 clusters of 100, 50, 20 and 5 rows, medium unrecorded in #1
        cluster = hood["cluster"]
        assert hood["rows"] == [100, 50, 20, 5][cluster]
        assert hood["tiers"]["medium"]["recorded"] == [100, 0, 20, 5][cluster]
        assert set(hood["tiers"]) == {"simple", "medium", "critical"}
        # Rollback = move the alias back.
        assert served_after_alias("1").json()["target_tier"] == "simple"
    finally:
        client.set_registered_model_alias(MODEL, "champion", "1")
    assert service.proc.pid == pid and service.proc.poll() is None  # same process throughout


# -- bad input, limits, faults, secrets ---------------------------------------------------------

PLANTED_EMAIL = "jane.roe.planted@example.org"
PLANTED_CARD = "4111 1111 1111 1111"


def test_bad_input_gets_a_4xx_that_says_what_is_wrong(service: ServiceProcess) -> None:
    ask = _ask("hi")
    cases = {
        "unknown message role": ({"model": "auto", "messages": [{"role": "wizard",
                                                                "content": "hi"}]}, 400),
        "content must be a string": ({"model": "auto", "messages": [{"role": "user",
                                                                     "content": 5}]}, 400),
        "stream: Input should be a valid boolean": ({**ask, "stream": "yes"}, 400),
        "temperature: Input should be less than or equal to 2": ({**ask, "temperature": 7},
                                                                 400),
        "tools: Input should be a valid list": ({**ask, "tools": "x"}, 400),
        "stream_options: Input should be a valid dictionary": (
            {**ask, "stream": True, "stream_options": 5}, 400),
        "prompt has": ({"model": "auto", "messages": [{"role": "user",
                                                       "content": "word " * 40_000}]}, 413),
    }
    for expected, (body, status) in cases.items():
        response = _post(service, KEY_A, body)
        assert response.status_code == status, (expected, response.text)
        assert expected in response.json()["error"]["message"], response.text
    raw = httpx.post(f"{service.root}/v1/chat/completions", timeout=30,
                     headers={"Authorization": f"Bearer {KEY_A}"},
                     content=b'{"model":"auto","messages":[{"role":"user","content":"\xff"}]}')
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    huge = httpx.post(f"{service.root}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {KEY_A}"}, content=b"x" * (2 << 20))
    assert huge.status_code == 413


def test_fuzzed_requests_never_get_a_500(service: ServiceProcess, tmp_path: Path) -> None:
    """Schema-shaped random bodies (hypothesis): right and wrong types for every standard
    field, odd roles and contents. Any answer but a 5xx is fine; the case count is written to
    ``var/fuzz-report.json`` and must reach the target."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalar = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6),
                       st.floats(allow_nan=False, allow_infinity=False, width=32),
                       st.text(max_size=40))
    content = st.one_of(scalar, st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "bogus"]), "text": scalar}), max_size=3))
    message = st.fixed_dictionaries({"role": st.sampled_from(
        ["user", "system", "assistant", "tool", "wizard", ""]), "content": content})
    body = st.fixed_dictionaries(
        {"messages": st.one_of(st.lists(message, max_size=4), scalar)},
        optional={"model": st.one_of(st.sampled_from(["auto", "simple", "nope"]), scalar),
                  "stream": scalar, "temperature": scalar, "max_tokens": scalar, "n": scalar,
                  "stop": scalar, "tools": scalar, "stream_options": scalar,
                  "response_format": scalar, "metadata": scalar})
    seen: list[int] = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body)
    def run(payload: dict) -> None:
        response = _post(service, KEY_B, payload)
        seen.append(response.status_code)
        assert response.status_code < 500, (payload, response.text)

    run()
    report = Path("var/fuzz-report.json")
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps({"cases": len(seen), "by_status": {
        str(s): seen.count(s) for s in sorted(set(seen))}}))
    assert len(seen) >= 150


def _written(service: ServiceProcess, request_id: str):
    """The service's decision record of a request, once its writer thread has stored it."""
    with DecisionLog(service.decisions_url) as log:  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while (record := log.get(request_id)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
    return record


def test_a_stream_broken_mid_way_ends_with_an_error_event_and_is_logged(
        service: ServiceProcess, failures) -> None:
    failures("together/mistralai/mixtral-8x7b-chat=midstream",
             "fireworks/mistralai/mixtral-8x7b-chat=midstream")
    with httpx.stream("POST", f"{service.root}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {KEY_B}"},
                      json={**_ask("Break this stream please", model="simple"),
                            "stream": True}) as response:
        assert response.status_code == 200  # the status line went out with the first chunk
        request_id = response.headers["x-router-request-id"]
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] != "[DONE]"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "stream_broken" and "broke after it began" in error["message"]
    assert any(json.loads(e).get("choices") for e in events[:-1])  # part of the answer came
    record = _written(service, request_id)
    assert record is not None and record.status == "error"
    assert "broke after it began" in record.error


def test_oversized_headers_get_a_400_from_the_http_server(service: ServiceProcess) -> None:
    """Past ~64 KB of headers the HTTP server (uvicorn/h11 under BentoML) answers 400 and closes
    before the app sees the request; read back over a raw socket, as a client still sending
    would see a reset instead."""
    import socket

    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000
                     + b"\r\n\r\n")
        reply = sock.recv(200)
    assert reply.startswith(b"HTTP/1.1 400")


@pytest.fixture(scope="module")
def limited_service(registry: Registry, simulator: SimulatorProcess
                    ) -> Iterator[ServiceProcess]:
    """Rate limited (1 request/s per key, bursts of 3); tenant-b's monthly budget is tiny."""
    process = _start(registry, simulator, "limited", ROUTER_RATE_LIMIT_RPS="1",
                     ROUTER_RATE_LIMIT_BURST="3", ROUTER_TENANT_BUDGETS="tenant-b=0.00001")
    yield process
    process.stop()


def test_401_403_429_are_distinct(limited_service: ServiceProcess) -> None:
    assert _post(limited_service, "sk-nobody", _ask("hi")).status_code == 401
    codes = [_post(limited_service, KEY_A, _ask(f"burst {i}")).status_code for i in range(5)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    limited = _post(limited_service, KEY_A, _ask("again"))
    if limited.status_code == 429:
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(limited.headers["retry-after"]) >= 1
    # tenant-b: the first answer spends more than its whole budget; then 403, clearly.
    assert _post(limited_service, KEY_B, _ask("spend it")).status_code == 200
    refused = _post(limited_service, KEY_B, _ask("one more"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "budget_exhausted"
    assert "budget" in refused.json()["error"]["message"]


def test_database_outage_loses_no_decision(registry: Registry, simulator: SimulatorProcess,
                                           postgres_server: PostgresServer) -> None:
    """The service on PostgreSQL: the database goes down mid-traffic, every request is still
    answered, the records wait in the spill file, and once it is back rows == requests."""
    from sqlalchemy import create_engine

    from router.telemetry import metadata

    engine = create_engine(postgres_server.url)
    metadata.drop_all(engine)  # the cluster is shared with other tests
    engine.dispose()
    process = _start(registry, simulator, "postgres",
                     ROUTER_DECISION_LOG_URL=postgres_server.url,
                     ROUTER_DECISION_SPILL_PATH=str(registry.root / "postgres" / "spill.jsonl"))
    try:
        ids = [_post(process, KEY_A, _ask(f"before {i}")).headers["x-router-request-id"]
               for i in range(3)]
        time.sleep(1)  # written; the pool now holds connections the restart will break
        postgres_server.stop()
        try:
            during = [_post(process, KEY_A, _ask(f"during {i}")) for i in range(8)]
            assert [r.status_code for r in during] == [200] * 8  # still served
            ids += [r.headers["x-router-request-id"] for r in during]
            spill = registry.root / "postgres" / "spill.jsonl"
            deadline = time.monotonic() + 30  # the writer retries with backoff, then spills
            while not (spill.exists() and spill.read_text().count("\n") >= 8):
                assert time.monotonic() < deadline, "nothing reached the spill file"
                time.sleep(0.5)
        finally:
            postgres_server.start()
        ids.append(_post(process, KEY_A, _ask("after")).headers["x-router-request-id"])
        with DecisionLog(postgres_server.url) as log:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                written = {r.request_id for r in log.read()}
                if set(ids) <= written:
                    break
                time.sleep(0.5)
        assert set(ids) <= written and len(written) == len(ids)  # rows == requests
    finally:
        process.stop()


# Last in the module: it scans what every service above wrote.
def test_logged_prompts_are_scrubbed_and_no_secret_reaches_a_log(
        service: ServiceProcess, registry: Registry) -> None:
    text = f"My email is {PLANTED_EMAIL} and my card {PLANTED_CARD}; why was I charged twice?"
    request_id = _post(service, KEY_A, _ask(text)).headers["x-router-request-id"]
    record = _written(service, request_id)
    assert record is not None and "[EMAIL]" in record.text and "[CARD]" in record.text
    from router.config import load_config

    provider_keys = {d.litellm_params.api_key for d in load_config(
        REPO / "configs" / "router.yaml").model_list if d.litellm_params.api_key}
    planted = {PLANTED_EMAIL, PLANTED_CARD, KEY_A, KEY_B, *provider_keys}
    # Every service this module started: its whole log and every decision row it wrote.
    logs = sorted(registry.root.glob("*/service.log"))
    databases = sorted(registry.root.glob("*/decisions.sqlite"))
    assert logs and databases
    for database in databases:
        with DecisionLog(f"sqlite:///{database}") as log:
            dumped = "\n".join(json.dumps(r.to_row(), default=str) for r in log.read())
        for secret in planted:
            assert secret not in dumped, f"{secret!r} in a decision row of {database}"
    for path in logs:
        logged = path.read_text(errors="replace")
        for secret in planted:
            assert secret not in logged, f"{secret!r} in {path}"
