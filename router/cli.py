"""``tier-router``: the command line. A thin edge: domain errors become exit codes here.

Exit codes: 0 ok, 1 invalid input (config, workload, arguments), 2 usage error (typer's own).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from router.config import load_config
from router.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Confidence-gated LLM router: config checks, provider simulator, replay.")
logger = logging.getLogger("tier_router")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # LiteLLM logs every call at INFO; the decision log already records each one.
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=1)


@app.command("check-config")
def check_config(file: Annotated[Path, typer.Argument(help="router YAML file")]) -> None:
    """Validate a router config; on error name the file, each bad field and what is wrong."""
    try:
        config = load_config(file)
    except ConfigError as exc:
        raise _fail(f"invalid config:\n{exc}") from None
    tiers = {d.model_name for d in config.model_list}
    typer.echo(f"{file}: ok ({len(config.model_list)} deployments over {len(tiers)} tiers)")


@app.command()
def simulate(
    config: Annotated[Path, typer.Option(help="router YAML whose deployments to simulate")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8900,
    host: Annotated[str, typer.Option(help="bind address; keep it on loopback")] = "127.0.0.1",
    fail: Annotated[list[str] | None, typer.Option(
        help="PROVIDER/MODEL=RATE (HTTP 500 at RATE, 1.0 = hard down) or "
             "PROVIDER/MODEL=timeout[:RATE]; repeatable")] = None,
    workload: Annotated[list[str] | None, typer.Option(
        help="workloads whose recorded answers to replay (name or path; repeatable); "
             "default: every built-in with outcomes")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder of built-in workloads")] = None,
    latency_scale: Annotated[float, typer.Option(
        help="multiply the modelled latency (0 answers at once)")] = 1.0,
    hang_s: Annotated[float, typer.Option(help="seconds a 'timeout' failure hangs")] = 120.0,
    seed: Annotated[int, typer.Option(help="seed for failure draws and latency jitter")] = 0,
    judge_invalid_rate: Annotated[float, typer.Option(
        help="share of the judge stand-in's answers that are not valid JSON")] = 0.1,
) -> None:
    """Serve the provider simulator, a stand-in for hosted providers (OpenAI protocol)."""
    import uvicorn

    from simulator import OUTCOME_WORKLOADS, SimulatorError, build_simulator, create_app
    from workloads import WorkloadFormatError

    try:
        sim = build_simulator(load_config(config), workloads=workload or OUTCOME_WORKLOADS,
                              data_dir=data_dir, fail_specs=fail or (),
                              latency_scale=latency_scale, hang_s=hang_s, seed=seed,
                              judge_invalid_rate=judge_invalid_rate)
    except (ConfigError, SimulatorError, WorkloadFormatError) as exc:
        raise _fail(str(exc)) from None
    logger.info("simulating %s on http://%s:%d (%d known prompts; failures %s)",
                ", ".join(sim.keys), host, port, len(sim.catalog), sim.failures or "none")
    uvicorn.run(create_app(sim), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=2)


@app.command()
def replay(
    config: Annotated[Path, typer.Option(help="router YAML")],
    workload: Annotated[str, typer.Option(help="built-in name (routerbench, mmlu...) or path")],
    out: Annotated[Path, typer.Option(help="JSON report to write")],
    limit: Annotated[int | None, typer.Option(min=1, help="replay this many records, drawn "
                                               "with --seed (default: all)")] = None,
    simulator: Annotated[str | None, typer.Option(
        help="simulator root URL: replaces the host of every deployment, keeping its path")]
        = None,
    classifier: Annotated[str, typer.Option(
        help="fixed:TIER, a model directory or models:/tier-classifier@champion "
             "(default: the frontier-only baseline)")] = "fixed:critical",
    tracking_uri: Annotated[str, typer.Option(
        help="MLflow store for models:/ classifiers")] = "sqlite:///mlruns/mlflow.db",
    decision_log: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL of the decision log (default: the config's)")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
    seed: Annotated[int, typer.Option(help="seed for drawing --limit records")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="folder of built-in workloads")] = None,
) -> None:
    """Send a workload through the full request path; write cost, quality and latency."""
    import asyncio
    import json

    from router.classifier import ClassifierError, load_classifier
    from router.dispatch import Dispatcher
    from router.policy import RouterPolicy
    from router.replay import replay_records, select_records, summarise
    from router.telemetry import DecisionLog
    from workloads import WorkloadFormatError, load_workload

    try:
        router_config = load_config(config)
        records = select_records(load_workload(workload, data_dir), limit, seed)
        if classifier.startswith("models:"):
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
        tier_classifier = load_classifier(classifier)
        dispatcher = Dispatcher(router_config, api_base_override=simulator)
    except (ConfigError, WorkloadFormatError, ClassifierError, ValueError) as exc:
        raise _fail(str(exc)) from None
    from sqlalchemy.engine import make_url

    log_url = decision_log or router_config.decision_log.url
    with DecisionLog(log_url) as log:
        policy = RouterPolicy(router_config, tier_classifier, dispatcher, log)
        items = asyncio.run(replay_records(policy, records, concurrency=concurrency,
                                           simulator_url=simulator))
        log.flush()
    report = {**summarise(items), "workload": workload, "classifier": classifier,
              "config": str(config), "simulator": simulator, "limit": limit, "seed": seed,
              "decision_log": make_url(log_url).render_as_string(hide_password=True)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps({k: report[k] for k in (
        "requests", "failures", "cost_per_task", "quality", "escalation_rate", "fallbacks",
        "p50_ms", "p95_ms")}))


if __name__ == "__main__":
    app()
