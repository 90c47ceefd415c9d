"""Dispatch through real LiteLLM to the simulator over HTTP, with injected provider failures."""

from __future__ import annotations

import asyncio

import pytest

from router.config import RouterConfig
from router.dispatch import Dispatcher, DispatchError, rebase_api_base
from tests.conftest import SimulatorProcess
from workloads import Workload

SIMPLE_A = "together/mistralai/mixtral-8x7b-chat"
SIMPLE_B = "fireworks/mistralai/mixtral-8x7b-chat"


def dispatch(dispatcher: Dispatcher, tier: str, messages: list[dict], request_id: str):
    return asyncio.run(dispatcher.acompletion(tier, messages, request_id=request_id))


def test_rebase_keeps_each_providers_path() -> None:
    assert rebase_api_base("http://127.0.0.1:8900/p/azure/v1", "http://127.0.0.1:5555") == (
        "http://127.0.0.1:5555/p/azure/v1")
    with pytest.raises(ValueError, match="simulator URL"):
        rebase_api_base("http://127.0.0.1:8900/p/azure/v1", "127.0.0.1:5555")


def test_answer_cost_and_tokens(simulator: SimulatorProcess, router_config: RouterConfig,
                                routerbench: Workload) -> None:
    dispatcher = Dispatcher(router_config, api_base_override=simulator.root)
    record = routerbench.records[0]
    result = dispatch(dispatcher, "critical", record.messages(), "cost-1")
    assert result.tier == "critical"
    assert result.deployment in {"openai/gpt-4-1106-preview", "azure/gpt-4-1106-preview"}
    assert result.response.choices[0].message.content == routerbench.tier_outcome(
        record, "critical").response
    assert result.cost_usd == pytest.approx(
        result.prompt_tokens * 1e-5 + result.completion_tokens * 3e-5)
    # LiteLLM priced it the same way from the config's per-deployment prices.
    assert result.response._hidden_params["response_cost"] == pytest.approx(result.cost_usd)
    assert result.deployments_tried == [result.deployment]
    assert result.fallbacks == []


def test_same_tier_fallback_is_recorded(simulator: SimulatorProcess,
                                        router_config: RouterConfig, failures) -> None:
    failures(f"{SIMPLE_A}=1.0")
    dispatcher = Dispatcher(router_config, api_base_override=simulator.root)
    seen_fallback = False
    for i in range(6):
        result = dispatch(dispatcher, "simple", [{"role": "user", "content": f"hi {i}"}],
                          f"same-{i}")
        assert (result.tier, result.deployment) == ("simple", "fireworks/mixtral-8x7b-chat")
        for fallback in result.fallbacks:
            assert fallback["kind"] == "deployment"
            assert (fallback["from"], fallback["to"]) == ("together/mixtral-8x7b-chat",
                                                          "fireworks/mixtral-8x7b-chat")
            assert "Simulated provider failure" in fallback["reason"]
            seen_fallback = True
    assert seen_fallback


def test_whole_tier_down_falls_back_one_tier_up(simulator: SimulatorProcess,
                                                router_config: RouterConfig, failures) -> None:
    failures(f"{SIMPLE_A}=1.0", f"{SIMPLE_B}=1.0")
    dispatcher = Dispatcher(router_config, api_base_override=simulator.root)
    for i in range(3):
        result = dispatch(dispatcher, "simple", [{"role": "user", "content": f"yo {i}"}],
                          f"tier-{i}")
        assert result.tier == "medium"
        tier_fallbacks = [f for f in result.fallbacks if f["kind"] == "tier"]
        assert len(tier_fallbacks) == 1
        assert (tier_fallbacks[0]["from"], tier_fallbacks[0]["to"]) == ("simple", "medium")
        assert tier_fallbacks[0]["reason"].startswith("all simple deployments failed")


def test_frontier_down_is_a_clear_503(simulator: SimulatorProcess,
                                      router_config: RouterConfig, failures) -> None:
    failures("openai/gpt-4-1106-preview=1.0", "azure/gpt-4-1106-preview=1.0")
    dispatcher = Dispatcher(router_config, api_base_override=simulator.root)
    with pytest.raises(DispatchError) as caught:
        dispatch(dispatcher, "critical", [{"role": "user", "content": "help"}], "down-1")
    assert caught.value.status_code == 503
    assert "tier 'critical' failed" in str(caught.value)
    assert set(caught.value.deployments_tried) <= {"openai/gpt-4-1106-preview",
                                                  "azure/gpt-4-1106-preview"}
    assert caught.value.deployments_tried


def test_timeouts_fall_back_too(simulator: SimulatorProcess, router_config: RouterConfig,
                                failures) -> None:
    """A hanging provider: LiteLLM's timeout fires, the other provider answers."""
    failures(f"{SIMPLE_A}=timeout", f"{SIMPLE_B}=timeout")
    fast = router_config.model_copy(update={"router_settings": router_config.router_settings
                                            .model_copy(update={"timeout": 0.5,
                                                                "num_retries": 1})})
    dispatcher = Dispatcher(fast, api_base_override=simulator.root)
    result = dispatch(dispatcher, "simple", [{"role": "user", "content": "slow?"}], "slow-1")
    assert result.tier == "medium"
    assert "Timeout" in result.fallbacks[-1]["reason"]


def test_every_deployment_is_tried_before_the_tier_fails(
        simulator: SimulatorProcess, router_config: RouterConfig, failures) -> None:
    """With no LiteLLM retries, a pick of the dead provider must still reach the live one."""
    failures(f"{SIMPLE_A}=1.0")
    no_retries = router_config.model_copy(update={
        "router_settings": router_config.router_settings.model_copy(
            update={"num_retries": 0, "allowed_fails": 100})})
    dispatcher = Dispatcher(no_retries, api_base_override=simulator.root)
    results = [dispatch(dispatcher, "simple", [{"role": "user", "content": f"n {i}"}], f"n-{i}")
               for i in range(12)]
    assert {(r.tier, r.deployment) for r in results} == {("simple",
                                                          "fireworks/mixtral-8x7b-chat")}
    # LiteLLM picks at random: some of the 12 first tries hit the dead provider (p = 1 - 2^-12).
    assert any(r.deployments_tried[0] == "together/mixtral-8x7b-chat" for r in results)


async def _drain(stream) -> list:
    return [chunk async for chunk in stream.chunks()]


def test_a_stream_carries_the_answer_its_usage_and_cost(simulator: SimulatorProcess,
                                                         router_config: RouterConfig) -> None:
    dispatcher = Dispatcher(router_config, api_base_override=simulator.root)
    plain = dispatch(dispatcher, "medium", [{"role": "user", "content": "stream me"}], "st-0")

    async def run():
        stream = await dispatcher.astream("medium", [{"role": "user", "content": "stream me"}],
                                          request_id="st-1")
        return stream, await _drain(stream)

    stream, chunks = asyncio.run(run())
    assert stream.tier == "medium" and stream.deployment in dispatcher.deployments
    assert stream.content == plain.response.choices[0].message.content
    assert (stream.prompt_tokens, stream.completion_tokens) == (plain.prompt_tokens,
                                                                plain.completion_tokens)
    # Priced at the deployment that streamed (LiteLLM may pick the other provider of the tier).
    assert stream.cost_usd > 0
    assert stream.cost_usd == pytest.approx(dispatcher.cost(
        stream.deployment, stream.prompt_tokens, stream.completion_tokens))
    # The client did not ask for usage: the usage-only chunk is not passed on.
    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    result = stream.result()
    assert result.response.choices[0].message.content == stream.content
    assert result.cost_usd == stream.cost_usd


def test_a_stream_whose_tier_is_down_opens_a_tier_up(simulator: SimulatorProcess,
                                                     router_config: RouterConfig,
                                                     failures) -> None:
    failures(f"{SIMPLE_A}=1.0", f"{SIMPLE_B}=1.0")
    dispatcher = Dispatcher(router_config, api_base_override=simulator.root)

    async def run():
        stream = await dispatcher.astream("simple", [{"role": "user", "content": "fall"}],
                                          request_id="st-2",
                                          stream_options={"include_usage": True})
        return stream, await _drain(stream)

    stream, chunks = asyncio.run(run())
    assert stream.tier == "medium"
    assert [f["kind"] for f in stream.fallbacks if f["kind"] == "tier"] == ["tier"]
    assert chunks[-1].usage.completion_tokens == stream.completion_tokens > 0
