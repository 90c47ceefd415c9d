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
            # Per-deployment prices are the config's on purpose; LiteLLM warns about each one.
            logging.getLogger(name).addFilter(
                lambda rec: "has custom pricing but not in built-in cost map"
                not in rec.getMessage())


def _command_line() -> str:
    """How this command was invoked, for reports that say how to reproduce them."""
    import shlex
    import sys

    return "tier-router " + shlex.join(sys.argv[1:])


def _write_report(report: dict, out: Path) -> None:
    """A bench report as JSON, with the command line that reproduces it."""
    import json

    report["command"] = _command_line()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


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


@app.command()
def bench(
    workload: Annotated[str, typer.Option(
        help="routerbench, mmlu, gsm8k, mt_bench, mixed, paraphrase, or a PATH in the "
             "RouterBench or RouteLLM layout")],
    out: Annotated[Path, typer.Option(help="JSON report to write")],
    plots: Annotated[Path | None, typer.Option(help="folder for the PNG curves")] = None,
    config: Annotated[Path, typer.Option(help="router YAML")] = Path("configs/router.yaml"),
    classifier: Annotated[str, typer.Option(help="tier classifier spec")]
        = "models:/tier-classifier@champion",
    scorer: Annotated[str, typer.Option(help="response scorer spec")]
        = "models:/response-scorer@champion",
    tracking_uri: Annotated[str, typer.Option(help="MLflow store for models:/ specs")]
        = "sqlite:///mlruns/mlflow.db",
    simulator: Annotated[str | None, typer.Option(
        help="a running simulator's root URL (default: start one on 127.0.0.1)")] = None,
    fold_file: Annotated[Path, typer.Option(
        help="the split stage's test fold: a built-in workload reports on its rows there")]
        = Path("data/pipeline/split/test.parquet"),
    limit: Annotated[int | None, typer.Option(min=2, help="this many test rows, drawn "
                                               "with --seed (default: all; mixed: 1000)")] = None,
    bootstrap: Annotated[int, typer.Option(min=10, help="bootstrap resamples")] = 500,
    seed: Annotated[int, typer.Option()] = 0,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
    data_dir: Annotated[Path | None, typer.Option(help="folder of built-in workloads")] = None,
    observations: Annotated[Path | None, typer.Option(
        help=".npz of per-row, per-tier observations: reused if it exists (same models and "
             "rows only), else written")] = None,
) -> None:
    """Replay a workload under every approach (frontier-only ... oracle); curves, AIQ, intervals.

    The benchmark harness lives in the ``bench`` package; only this edge imports it.
    """
    import json

    from bench.main import (
        MIXED_ROWS,
        run_mixed_bench,
        run_outcome_bench,
        run_paraphrase_bench,
        select_rows,
    )
    from bench.observe import BenchError
    from bench.run import write_plots
    from router.classifier import ClassifierError, load_classifier
    from router.scorer import ScorerError, load_scorer
    from simulator import BackgroundServer, SimulatorError, build_simulator, create_app
    from workloads import BUILTIN, OUTCOME_WORKLOADS, WorkloadFormatError, load_workload

    mixed = workload == "mixed"
    try:
        router_config = load_config(config)
        if workload == "paraphrase":
            loaded = {}
        elif mixed:
            sources = ("routerbench", "mmlu", "gsm8k", "banking77", "clinc150")
            loaded = {name: load_workload(name, data_dir) for name in sources}
        else:
            loaded = load_workload(workload, data_dir)
            rows = select_rows(loaded, workload in BUILTIN, fold_file, limit, seed)
            logger.info("bench %s: %d rows (%s)", workload, len(rows.test), rows.source)
        if "models:/" in classifier + scorer:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
        tier_classifier = load_classifier(classifier)
        response_scorer = load_scorer(scorer)
    except (ConfigError, WorkloadFormatError, ClassifierError, ScorerError, BenchError,
            ValueError) as exc:
        raise _fail(str(exc)) from None

    if workload == "paraphrase":  # the cache alone: no provider calls, no simulator
        report = run_paraphrase_bench(tier_classifier, seed=seed, limit=limit,
                                      bootstrap=bootstrap)
        _write_report(report, out)
        typer.echo(json.dumps(report["datasets"], indent=1))
        return

    def run(url: str) -> dict:
        if mixed:
            return run_mixed_bench(loaded, fold_file, limit or MIXED_ROWS, router_config,
                                   tier_classifier, response_scorer, url, bootstrap=bootstrap,
                                   seed=seed, concurrency=concurrency, observations=observations)
        return run_outcome_bench(loaded, rows, router_config, tier_classifier, response_scorer,
                                 url, bootstrap=bootstrap, seed=seed, concurrency=concurrency,
                                 observations=observations)

    try:
        if simulator is None:
            sim = build_simulator(router_config, data_dir=data_dir, latency_scale=0.0,
                                  workloads=[n for n in loaded if n in OUTCOME_WORKLOADS]
                                  if mixed else [workload])
            with BackgroundServer(create_app(sim)) as server:
                report = run(server.url)
        else:
            report = run(simulator)
    except (SimulatorError, BenchError) as exc:
        raise _fail(str(exc)) from None
    _write_report(report, out)
    if plots is not None:
        write_plots(report, plots, out.stem)
    typer.echo(json.dumps({name: {k: round(v, 6) if isinstance(v, float) else v
                                  for k, v in row.items() if k != "quality_ci"}
                           for name, row in report["approaches"].items()}, indent=1))


@app.command()
def overhead(
    out: Annotated[Path, typer.Option(help="JSON report to write")],
    config: Annotated[Path, typer.Option(help="router YAML")] = Path("configs/router.yaml"),
    classifier: Annotated[str, typer.Option(help="tier classifier spec (a local model: the "
                                                 "cache shares its encoder pass)")]
        = "models:/tier-classifier@champion",
    tracking_uri: Annotated[str, typer.Option(help="MLflow store for models:/ specs")]
        = "sqlite:///mlruns/mlflow.db",
    requests: Annotated[int, typer.Option(min=20, help="requests per case")] = 200,
    warm: Annotated[int, typer.Option(min=0, help="other queries in the cache")] = 2000,
    data_dir: Annotated[Path | None, typer.Option(help="folder of built-in workloads")] = None,
) -> None:
    """Router overhead without the LLM call: cache miss / exact hit / semantic hit vs one
    MiniLM pass, single query and at concurrency 8 and 32, at 32 and 128 tokens."""
    import json

    from bench.overhead import measure
    from router.cache import (
        CacheError,
        EncoderError,
        MiniLMEncoder,
        SharedPassEncoder,
        create_cache,
    )
    from router.classifier import ClassifierError, load_classifier
    from router.dispatch import Dispatcher
    from router.policy import RouterPolicy
    from workloads import WorkloadFormatError, load_workload

    try:
        router_config = load_config(config)
        if classifier.startswith("models:"):
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
        tier_classifier = load_classifier(classifier)
        cache = create_cache(router_config.cache, SharedPassEncoder(tier_classifier), path=None)
        records = [r for name in ("routerbench", "mmlu")
                   for r in load_workload(name, data_dir).records]
    except (ConfigError, ClassifierError, CacheError, EncoderError, WorkloadFormatError,
            ValueError) as exc:
        raise _fail(str(exc)) from None
    policy = RouterPolicy(router_config, tier_classifier, Dispatcher(router_config),
                          cache=cache)
    encoder = MiniLMEncoder()  # the reference pass, and the token counts of the test texts
    report = measure(policy, cache, encoder, records, encoder.tokenizer, n=requests, warm=warm)
    report.update({"classifier": tier_classifier.meta.version,
                   "similarity_threshold": cache.threshold})
    _write_report(report, out)
    typer.echo(json.dumps({tokens: {case: round(row[case]["p50_ms"], 3) for case in row
                                    if case != "ratios"}
                           for tokens, row in report["by_tokens"].items()}, indent=1))


@app.command()
def load(
    out: Annotated[Path, typer.Option(help="JSON report to write")],
    config: Annotated[Path, typer.Option(help="router YAML")] = Path("configs/router.yaml"),
    clients: Annotated[int, typer.Option(min=1, help="concurrent clients")] = 50,
    duration: Annotated[float, typer.Option(min=1.0, help="seconds per run")] = 60.0,
    failing: Annotated[str, typer.Option(help="deployment down in the second runs")]
        = "together/mistralai/mixtral-8x7b-chat",
    proxy: Annotated[bool, typer.Option(help="also run LiteLLM's proxy (own environment)")]
        = True,
) -> None:
    """The service under load beside LiteLLM's proxy and the simulator called directly, healthy
    and with one provider down: errors, throughput, p50/p99, router overhead, decision rows."""
    import json

    from bench.load import measure
    from serving.venvs import VenvError
    from workloads import WorkloadFormatError, load_workload

    try:
        prompts = [r.turns[-1] for name in ("mmlu", "routerbench")
                   for r in load_workload(name).records][:4000]
        report = measure(router_config=config, clients=clients, duration_s=duration,
                         prompts=prompts, failing=failing, with_proxy=proxy)
    except (WorkloadFormatError, VenvError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    _write_report(report, out)
    typer.echo(json.dumps({name: {k: round(v, 2) if isinstance(v, float) else v
                                  for k, v in run.items() if k != "statuses"}
                           for name, run in report["runs"].items()}, indent=1))
    if "comparison" in report:
        typer.echo(json.dumps(report["comparison"], indent=1))


@app.command("service-check")
def service_check(
    out: Annotated[Path, typer.Option(help="JSON report to write")],
    url: Annotated[str, typer.Option(help="the running router service")]
        = "http://127.0.0.1:3000",
    key: Annotated[str, typer.Option(help="an API key the service accepts")]
        = "sk-tier-router-demo",
    config: Annotated[Path, typer.Option(help="router YAML the service runs")]
        = Path("configs/router.yaml"),
    classifier: Annotated[str, typer.Option(help="the classifier the service runs")]
        = "models:/tier-classifier@champion",
    tracking_uri: Annotated[str, typer.Option(help="MLflow store for models:/ specs")]
        = "sqlite:///mlruns/mlflow.db",
    workload: Annotated[str, typer.Option(help="built-in workload whose test queries to send")]
        = "banking77",
    limit: Annotated[int, typer.Option(min=1, help="queries")] = 200,
    seed: Annotated[int, typer.Option(help="draw of the queries")] = 0,
) -> None:
    """Real traffic through a running service (``make demo``) with the openai client: which tier
    answered, gate actions, escalations, cost, the README's demo prompt, and agreement with the
    library's own decision on the same requests (what the benchmark replays)."""
    import json

    from bench.service_check import check, draw_test_queries
    from router.classifier import ClassifierError, load_classifier
    from workloads import WorkloadFormatError, load_workload

    try:
        router_config = load_config(config)
        if classifier.startswith("models:"):
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
        tier_classifier = load_classifier(classifier)
        records = draw_test_queries(list(load_workload(workload).records), limit, seed)
    except (ConfigError, ClassifierError, WorkloadFormatError) as exc:
        raise _fail(str(exc)) from None
    if not records:
        raise _fail(f"{workload}: no test-split queries (ids '<name>.test.<i>')")
    try:
        report = check(url, key, records, router_config, tier_classifier)
    except Exception as exc:  # the openai client's connection and HTTP errors
        raise _fail(f"{url}: {type(exc).__name__}: {exc}") from None
    report["workload"] = workload
    _write_report(report, out)
    typer.echo(json.dumps(report, indent=1))


@app.command()
def injection(
    out: Annotated[Path, typer.Option(help="JSON report to write")],
    config: Annotated[Path, typer.Option(help="router YAML")] = Path("configs/router.yaml"),
    classifier: Annotated[str, typer.Option(help="tier classifier spec")]
        = "models:/tier-classifier@champion",
    tracking_uri: Annotated[str, typer.Option(help="MLflow store for models:/ specs")]
        = "sqlite:///mlruns/mlflow.db",
    limit: Annotated[int, typer.Option(min=1, help="test prompts (RouterBench + MMLU)")] = 500,
    data_dir: Annotated[Path | None, typer.Option(help="folder of built-in workloads")] = None,
) -> None:
    """Prompt injection at the classifier: how often attacks appended or prepended to real
    prompts move the tier the gate names (up = towards the frontier, down = cheaper)."""
    import json
    import random

    from bench.injection import measure_injection
    from router.classifier import ClassifierError, load_classifier
    from router.gate import resolve_point
    from router.pricing import tier_prices
    from workloads import WorkloadFormatError, load_workload

    try:
        router_config = load_config(config)
        if classifier.startswith("models:"):
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
        tier_classifier = load_classifier(classifier)
        prompts = [r.turns[-1] for name in ("routerbench", "mmlu")
                   for r in load_workload(name, data_dir).records]
    except (ConfigError, ClassifierError, WorkloadFormatError, ValueError) as exc:
        raise _fail(str(exc)) from None
    prompts = random.Random(0).sample(prompts, min(limit, len(prompts)))
    point = resolve_point(router_config.gate, tier_classifier.meta.operating_point)
    report = measure_injection(tier_classifier, point, tier_prices(router_config), prompts)
    report["classifier"] = tier_classifier.meta.version
    _write_report(report, out)
    typer.echo(json.dumps({name: {k: round(v, 3) for k, v in row.items() if k != "direction"}
                           for name, row in report["attacks"].items()}, indent=1))


@app.command("bench-docs")
def bench_docs(
    results: Annotated[Path, typer.Argument(help="folder of the bench JSON reports")],
    out: Annotated[Path, typer.Argument(help="Markdown file to write")],
) -> None:
    """Write docs/benchmarks.md from the bench reports: tables, intervals, targets met/missed."""
    from bench.report import load_results, render

    reports = load_results(results)
    if not reports:
        raise _fail(f"{results}: no bench reports (*.json) to render")
    out.write_text(render(reports))
    typer.echo(f"{out}: {len(reports)} reports")


def _add_groups() -> None:
    # Operator command groups live in ``ops`` (reports over the decision log, doc rendering).
    from ops.cli import ab_app, monitor, shadow_app
    from ops.docs_cli import docs_app
    from ops.log_cli import log_app

    for group, name in ((ab_app, "ab"), (shadow_app, "shadow"), (log_app, "log"),
                        (docs_app, "docs")):
        app.add_typer(group, name=name)
    app.command("monitor")(monitor)


_add_groups()

if __name__ == "__main__":
    app()
