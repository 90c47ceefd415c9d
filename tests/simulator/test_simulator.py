"""The provider simulator (a stand-in for hosted providers) against real clients over HTTP."""

from __future__ import annotations

import hashlib
import json
import subprocess

import httpx
import jsonschema
import litellm
import openai
import pytest

from router.config import RouterConfig
from router.tokens import count_prompt_tokens, count_tokens
from simulator import SimulatorError, parse_fail_spec
from simulator.catalog import AnswerCatalog
from tests import openai_spec
from tests.conftest import CONFIG_PATH, SimulatorProcess, tier_router_exe
from workloads import Workload
from workloads.answers import generic_answer, record_answer, synthetic_answer

DEPLOYMENTS = {  # tier -> (provider, served model) of the shipped config's first deployment
    "simple": ("together", "mistralai/mixtral-8x7b-chat"),
    "medium": ("together", "zero-one-ai/Yi-34B-Chat"),
    "critical": ("openai", "gpt-4-1106-preview"),
}


def client(url: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="sk-test-stand-in", max_retries=0, **kwargs)


def lookup(sim: SimulatorProcess, completion_id: str) -> dict:
    response = httpx.get(f"{sim.root}/eval/completions/{completion_id}")
    response.raise_for_status()
    return response.json()


@pytest.mark.parametrize("tier", ["simple", "medium", "critical"])
def test_recorded_routerbench_prompt_gets_the_recorded_answer(
        simulator: SimulatorProcess, routerbench: Workload, tier: str) -> None:
    provider, model = DEPLOYMENTS[tier]
    for record in routerbench.records[:: len(routerbench.records) // 5]:
        raw = client(simulator.url(provider)).chat.completions.with_raw_response.create(
            model=model, messages=record.messages())
        completion = raw.parse()
        outcome = routerbench.tier_outcome(record, tier)
        assert outcome is not None
        assert completion.choices[0].message.content == outcome.response
        assert completion.choices[0].finish_reason == "stop"
        assert raw.headers["x-simulator-answer"] == "recorded"
        assert completion.usage.prompt_tokens == count_prompt_tokens(list(record.turns))
        assert completion.usage.completion_tokens == count_tokens(outcome.response)
        # Correctness is not in the response; only the evaluation lookup has it.
        assert "correct" not in raw.http_response.text
        found = lookup(simulator, completion.id)
        assert (found["record_id"], found["recorded_correct"], found["tier"]) == (
            record.id, outcome.correct, tier)


def test_mmlu_prompt_gets_a_synthetic_answer_marked_as_such(
        simulator: SimulatorProcess, mmlu: Workload) -> None:
    record = next(r for r in mmlu.records if r.gold and r.outcomes["gpt4_1106"].correct)
    raw = client(simulator.url("azure")).chat.completions.with_raw_response.create(
        model="gpt-4-1106-preview", messages=record.messages())
    assert raw.headers["x-simulator-answer"] == "synthetic"
    assert raw.parse().choices[0].message.content == f"The answer is {record.gold}."
    found = lookup(simulator, raw.parse().id)
    assert (found["answer_kind"], found["recorded_model"], found["recorded_correct"]) == (
        "synthetic", "gpt4_1106", True)
    # RouteLLM has no medium model: the medium tier answers as the next tier up (GPT-4).
    assert mmlu.executing_tier("medium") == "critical"
    medium = client(simulator.url("deepinfra")).chat.completions.create(
        model="zero-one-ai/Yi-34B-Chat", messages=record.messages())
    assert lookup(simulator, medium.id)["recorded_model"] == "gpt4_1106"
    assert medium.choices[0].message.content == f"The answer is {record.gold}."
    # Recorded wrong: never the gold letter, and the same letter every time.
    wrong = next(r for r in mmlu.records if r.gold and r.outcomes["gpt4_1106"].correct is False)
    letters = {client(simulator.url("azure")).chat.completions.create(
        model="gpt-4-1106-preview", messages=wrong.messages()).choices[0].message.content
        for _ in range(2)}
    assert len(letters) == 1
    assert letters.pop() in {f"The answer is {c}." for c in "ABCD" if c != wrong.gold}
    # MMLU rows without a gold letter still get a letter (a 500 before this was fixed), and
    # the evaluation lookup carries the modelled latency for benchmarks run at scale 0.
    no_gold = next(r for r in mmlu.records if not r.gold)
    answer = client(simulator.url("azure")).chat.completions.create(
        model="gpt-4-1106-preview", messages=no_gold.messages())
    assert answer.choices[0].message.content in {f"The answer is {c}." for c in "ABCD"}
    assert lookup(simulator, answer.id)["modelled_latency_ms"] > 0


def test_unknown_prompt_gets_a_deterministic_generic_answer(simulator: SimulatorProcess) -> None:
    messages = [{"role": "user", "content": "Write a haiku about routers."}]
    answers = set()
    for _ in range(2):
        raw = client(simulator.url("fireworks")).chat.completions.with_raw_response.create(
            model="mistralai/mixtral-8x7b-chat", messages=messages)
        assert raw.headers["x-simulator-answer"] == "generic"
        answers.add(raw.parse().choices[0].message.content)
    assert len(answers) == 1
    answer = answers.pop()
    assert "simulated reply" in answer and "mistralai/mixtral-8x7b-chat" in answer
    # Its reference: the first 12 hex digits of SHA-256 over the turn and a record separator.
    digest = hashlib.sha256(b"Write a haiku about routers.\x1e").hexdigest()[:12]
    assert f"reference {digest})" in answer


def test_the_simulator_answers_with_the_shared_answer_definitions(
        routerbench: Workload, mmlu: Workload) -> None:
    """workloads.answers is the one definition of what a provider answers (the calibration
    replay scores the same texts): the simulator's catalog gives exactly its answers."""
    catalog = AnswerCatalog([routerbench, mmlu])
    record = routerbench.records[5]
    outcome = routerbench.tier_outcome(record, "medium")
    answer = catalog.answer(record.turns, "zero-one-ai/Yi-34B-Chat", "medium")
    assert (answer.text, answer.kind) == record_answer(record, outcome,
                                                       "zero-one-ai/Yi-34B-Chat")
    assert answer.kind == "recorded" and answer.text == outcome.response
    for choice in (next(r for r in mmlu.records if r.gold), next(r for r in mmlu.records
                                                                 if not r.gold)):
        outcome = mmlu.tier_outcome(choice, "simple")
        answer = catalog.answer(choice.turns, "mistralai/mixtral-8x7b-chat", "simple")
        assert (answer.text, answer.kind) == (
            synthetic_answer(choice, outcome, "mistralai/mixtral-8x7b-chat"), "synthetic")
        assert record_answer(choice, outcome, "mistralai/mixtral-8x7b-chat") == (
            answer.text, "synthetic")
    turns = ("Nothing recorded asks this.",)
    unknown = catalog.answer(turns, "gpt-4-1106-preview", "critical")
    assert (unknown.text, unknown.kind) == (generic_answer(turns, "gpt-4-1106-preview"),
                                            "generic")


def test_streaming_matches_the_plain_answer(simulator: SimulatorProcess,
                                            routerbench: Workload) -> None:
    record = routerbench.records[-1]
    api = client(simulator.url("openai"))
    plain = api.chat.completions.create(model="gpt-4-1106-preview", messages=record.messages())
    chunks = list(api.chat.completions.create(
        model="gpt-4-1106-preview", messages=record.messages(), stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage == plain.usage


def test_max_tokens_cuts_the_answer(simulator: SimulatorProcess, routerbench: Workload) -> None:
    record = next(r for r in routerbench.records if r.category == "mbpp")
    completion = client(simulator.url("openai")).chat.completions.create(
        model="gpt-4-1106-preview", messages=record.messages(), max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_protocol_errors(simulator: SimulatorProcess) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as missing_model:
        client(simulator.url("openai")).chat.completions.create(model="gpt-5", messages=messages)
    assert missing_model.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as missing_provider:
        client(simulator.url("nowhere")).chat.completions.create(
            model="gpt-4-1106-preview", messages=messages)
    assert missing_provider.value.code == "provider_not_found"
    with pytest.raises(openai.BadRequestError):
        client(simulator.url("openai")).chat.completions.create(
            model="gpt-4-1106-preview", messages=[])
    response = httpx.post(f"{simulator.url('openai')}/chat/completions",
                          json={"model": "gpt-4-1106-preview", "messages": messages})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    models = client(simulator.url("together")).models.list()
    assert sorted(m.id for m in models) == ["mistralai/mixtral-8x7b-chat",
                                            "zero-one-ai/Yi-34B-Chat"]


@pytest.fixture(scope="module")
def gpt4_down() -> SimulatorProcess:
    process = SimulatorProcess("--fail", "openai/gpt-4-1106-preview=1.0")
    yield process
    process.stop()


def test_fail_flag_downs_exactly_that_deployment(gpt4_down: SimulatorProcess,
                                                 routerbench: Workload) -> None:
    messages = routerbench.records[0].messages()
    for _ in range(5):
        with pytest.raises(openai.InternalServerError, match="openai/gpt-4-1106-preview"):
            client(gpt4_down.url("openai")).chat.completions.create(
                model="gpt-4-1106-preview", messages=messages)
    # Same model at the other provider, and every other deployment, still answer.
    for provider, model in [("azure", "gpt-4-1106-preview"),
                            ("together", "mistralai/mixtral-8x7b-chat"),
                            ("fireworks", "mistralai/mixtral-8x7b-chat"),
                            ("together", "zero-one-ai/Yi-34B-Chat"),
                            ("deepinfra", "zero-one-ai/Yi-34B-Chat")]:
        completion = client(gpt4_down.url(provider)).chat.completions.create(
            model=model, messages=messages)
        assert completion.choices[0].message.content


def test_litellm_router_from_the_config_falls_back_and_prices_calls(
        gpt4_down: SimulatorProcess, router_config: RouterConfig,
        routerbench: Workload) -> None:
    """The config's model_list drives a real litellm.Router: with one GPT-4 provider down the
    call lands on the other, and its cost comes from that deployment's per-token prices."""
    model_list = router_config.litellm_model_list()
    for entry in model_list:
        entry["litellm_params"]["api_base"] = entry["litellm_params"]["api_base"].replace(
            "http://127.0.0.1:8900", gpt4_down.root)
    # allowed_fails=0: the first 500 cools the failing deployment down, so the retry cannot pick
    # it again (same-tier fallback policy proper belongs to router.dispatch).
    router = litellm.Router(model_list=model_list, num_retries=2, retry_after=0, allowed_fails=0)
    record = routerbench.records[0]
    for _ in range(3):
        response = router.completion(model="critical", messages=record.messages())
        assert response._hidden_params["model_id"] == "azure/gpt-4-1106-preview"
        usage = response.usage
        assert response._hidden_params["response_cost"] == pytest.approx(
            usage.prompt_tokens * 1e-5 + usage.completion_tokens * 3e-5)
        assert response.choices[0].message.content == routerbench.tier_outcome(
            record, "critical").response


def test_failures_can_be_changed_while_running(simulator: SimulatorProcess) -> None:
    messages = [{"role": "user", "content": "hi"}]
    put = httpx.put(f"{simulator.root}/sim/failures",
                    json={"specs": ["fireworks/mistralai/mixtral-8x7b-chat=0.5",
                                    "deepinfra/zero-one-ai/Yi-34B-Chat=timeout"]})
    assert put.status_code == 200, put.text
    try:
        failed = 0
        for _ in range(40):
            try:
                client(simulator.url("fireworks")).chat.completions.create(
                    model="mistralai/mixtral-8x7b-chat", messages=messages)
            except openai.InternalServerError:
                failed += 1
        assert 8 <= failed <= 32, failed  # rate 0.5 over 40 seeded draws
        with pytest.raises(openai.APITimeoutError):
            client(simulator.url("deepinfra"), timeout=0.5).chat.completions.create(
                model="zero-one-ai/Yi-34B-Chat", messages=messages)
        bad = httpx.put(f"{simulator.root}/sim/failures", json={"specs": ["nobody/x=1.0"]})
        assert bad.status_code == 400
        assert "unknown deployment" in bad.json()["error"]["message"]
    finally:
        httpx.put(f"{simulator.root}/sim/failures", json={"specs": []}).raise_for_status()
    assert httpx.get(f"{simulator.root}/sim/failures").json() == {}


@pytest.mark.parametrize(("spec", "kind", "rate"), [
    ("openai/gpt-4-1106-preview=1.0", "error", 1.0),
    ("together/mistralai/mixtral-8x7b-chat=0.25", "error", 0.25),
    ("azure/gpt-4-1106-preview=timeout", "timeout", 1.0),
    ("azure/gpt-4-1106-preview=timeout:0.1", "timeout", 0.1),
    ("azure/gpt-4-1106-preview=midstream", "midstream", 1.0),
])
def test_fail_specs(spec: str, kind: str, rate: float) -> None:
    _, mode = parse_fail_spec(spec)
    assert (mode.kind, mode.rate) == (kind, rate)


@pytest.mark.parametrize("spec", ["openai=1.0", "openai/gpt-4=2", "openai/gpt-4=soon", "x/y"])
def test_bad_fail_specs(spec: str) -> None:
    with pytest.raises(SimulatorError):
        parse_fail_spec(spec)


def test_fail_on_an_unknown_deployment_stops_the_command() -> None:
    result = subprocess.run(
        [*tier_router_exe(), "simulate", "--config", str(CONFIG_PATH), "--port", "1",
         "--workload", "gsm8k", "--fail", "openai/gpt-5=1.0"],
        capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 1
    assert "unknown deployment(s) ['openai/gpt-5']" in result.stderr


def test_responses_and_chunks_validate_against_openais_spec(
        simulator: SimulatorProcess, routerbench: Workload) -> None:
    body = {"model": "gpt-4-1106-preview", "messages": routerbench.records[3].messages()}
    headers = {"authorization": "Bearer sk-test-stand-in"}
    url = f"{simulator.url('openai')}/chat/completions"
    plain = httpx.post(url, json=body, headers=headers)
    openai_spec.validate(plain.json(), "CreateChatCompletionResponse")
    models = httpx.get(f"{simulator.url('openai')}/models", headers=headers).json()
    openai_spec.validate(models, "ListModelsResponse")
    with httpx.stream("POST", url, headers=headers, json={
            **body, "stream": True, "stream_options": {"include_usage": True}}) as stream:
        events = [line.removeprefix("data: ") for line in stream.iter_lines()
                  if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        openai_spec.validate(json.loads(event), "CreateChatCompletionStreamResponse")
    with pytest.raises(jsonschema.ValidationError):  # the check has teeth
        openai_spec.validate({**plain.json(), "object": "completion"},
                             "CreateChatCompletionResponse")
