"""docs/benchmarks.md, written from the benchmark JSON files (never by hand).

``render(results)`` takes ``{name: report}`` as the bench commands wrote them -- outcome workloads
(``routerbench``, ``mmlu``, ``gsm8k``, ``mixed``...), ``paraphrase`` and ``overhead`` -- and
returns the Markdown: one table per workload, the AIQ differences with their intervals, and every
DESIGN.md target marked met or missed with the figure that decides it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKLOAD_ORDER = ("routerbench", "mmlu", "gsm8k", "mixed", "paraphrase", "overhead")
APPROACH_ORDER = ("frontier_only", "routing_only", "cascade_only", "hybrid", "random_mix",
                  "best_fixed_mix", "per_category_mix", "oracle")


@dataclass(frozen=True)
class Target:
    workload: str
    text: str
    met: bool | None  # None: the figure is missing
    figure: str


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` in ``folder`` by file stem."""
    found = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    rank = {name: i for i, name in enumerate(WORKLOAD_ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _usd(x: float) -> str:
    return f"${x * 1000:.3f}e-3"


def targets(results: Mapping[str, dict[str, Any]]) -> list[Target]:
    """DESIGN.md's targets, each judged on the figure the report holds."""
    out: list[Target] = []
    rb = results.get("routerbench")
    if rb:
        for base in ("best_fixed_mix", "per_category_mix"):
            d = rb["aiq"]["differences"][f"hybrid_minus_{base}"]
            out.append(Target("routerbench", f"hybrid AIQ above {base}, interval excluding 0",
                              d["ci95"][0] > 0,
                              f"{d['aiq']:+.4f} (95% CI {d['ci95'][0]:+.4f} to "
                              f"{d['ci95'][1]:+.4f})"))
        at = rb["headline"]["curve_cost_ratio_at_95pct_quality"]
        out.append(Target("routerbench", "95% of frontier quality at <= 25% of its cost",
                          None if at is None else at <= 0.25,
                          "not reached" if at is None else f"{_pct(at)} of frontier cost"))
    for name in ("mmlu", "gsm8k"):
        report = results.get(name)
        if report and "frontier_share_for_95pct_quality" in report:
            share = report["frontier_share_for_95pct_quality"]["without_overrides"]
            out.append(Target(name, "frontier-call share for 95% of frontier quality <= 50% "
                              "(no overrides)" if name == "mmlu" else
                              "frontier-call share for 95% of frontier quality (reported)",
                              None if share is None or name != "mmlu" else share <= 0.5,
                              _pct(share)))
    mixed = results.get("mixed")
    if mixed:
        h, f = mixed["approaches"]["hybrid"], mixed["approaches"]["frontier_only"]
        out += [
            Target("mixed", "hybrid >= 70% cheaper than frontier-only",
                   h["cost_per_task"] <= 0.3 * f["cost_per_task"],
                   f"{_pct(1 - h['cost_per_task'] / f['cost_per_task'])} cheaper"),
            Target("mixed", "hybrid quality >= frontier-only's", h["quality"] >= f["quality"],
                   f"{h['quality']:.3f} vs {f['quality']:.3f}"),
            Target("mixed", "escalation rate <= 5%", h["escalation_rate"] <= 0.05,
                   _pct(h["escalation_rate"])),
            Target("mixed", "p95 <= 0.75x frontier-only's",
                   h["p95_latency_ms"] <= 0.75 * f["p95_latency_ms"],
                   f"{h['p95_latency_ms']:.0f} ms vs {f['p95_latency_ms']:.0f} ms"),
        ]
    para = results.get("paraphrase")
    if para:
        for name, row in para.get("datasets", {}).items():
            ok = row.get("hit_rate", 0) >= 0.3 and row.get("false_hit_share", 1) < row.get(
                "baseline_false_hit_share", 0)
            out.append(Target("paraphrase", f"{name}: >= 30% hits with fewer false hits than "
                              "plain cosine", ok,
                              f"{_pct(row.get('hit_rate'))} hits, "
                              f"{_pct(row.get('false_hit_share'))} false vs "
                              f"{_pct(row.get('baseline_false_hit_share'))} for cosine"))
    overhead = results.get("overhead")
    if overhead:
        for tokens, row in overhead.get("by_tokens", {}).items():
            enc = row["encoder_pass_ms"]["p50_ms"]
            miss = row["cache_miss"]
            out.append(Target("overhead", f"{tokens} tokens: cache-miss p50 <= 1.5x and p99 <= "
                              "3x one encoder pass",
                              miss["p50_ms"] <= 1.5 * enc and miss["p99_ms"] <= 3 * enc,
                              f"p50 {miss['p50_ms']:.2f} ms, p99 {miss['p99_ms']:.2f} ms vs "
                              f"encoder {enc:.2f} ms"))
            exact = row["cache_hit_exact"]["p50_ms"]
            out.append(Target("overhead", f"{tokens} tokens: exact hit p50 <= 1 ms", exact <= 1.0,
                              f"{exact:.3f} ms"))
    return out


def _approach_table(report: dict[str, Any]) -> list[str]:
    lines = ["| approach | cost per task | vs frontier | p95 latency | quality (95% CI) | "
             "escalation | cache hits | frontier calls |",
             "|---|---|---|---|---|---|---|---|"]
    frontier_cost = report["approaches"]["frontier_only"]["cost_per_task"]
    for name in APPROACH_ORDER:
        row = report["approaches"].get(name)
        if row is None:
            continue
        low, high = row["quality_ci"]
        lines.append(
            f"| {name} | {_usd(row['cost_per_task'])} | "
            f"{_pct(row['cost_per_task'] / frontier_cost)} | {row['p95_latency_ms']:.0f} ms | "
            f"{row['quality']:.3f} ({low:.3f} to {high:.3f}) | {_pct(row['escalation_rate'])} | "
            f"{_pct(row['cache_hit_rate'])} | {_pct(row['frontier_call_share'])} |")
    return lines


def _aiq_table(report: dict[str, Any]) -> list[str]:
    lines = ["| curve | AIQ |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in report["aiq"].items()
              if isinstance(value, float)]
    lines += ["", "| difference | AIQ | 95% CI (bootstrap over rows) |", "|---|---|---|"]
    lines += [f"| {name} | {d['aiq']:+.4f} | {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f} |"
              for name, d in report["aiq"]["differences"].items()]
    return lines


def _diagnosis(report: dict[str, Any]) -> str:
    """What each part adds, from the AIQs: the classifier (routing vs the zero router), the
    scorer (cascade vs a random mix of its two ends) and the two together."""
    a = report["aiq"]
    classifier = a["routing_only"] - a["best_fixed_mix"]
    scorer = a["cascade_only"] - a["random_mix"]
    rule = a["per_category_mix"] - a["best_fixed_mix"]
    return ("What each part adds (AIQ points): the classifier "
            f"{classifier:+.4f} (routing-only minus best fixed mix), the response scorer "
            f"{scorer:+.4f} (cascade-only minus random mix), a rule by category {rule:+.4f} "
            "(per-category minus best fixed mix). Operating points: "
            f"{report.get('operating_points_fitted_on', 'the models thresholds')}.")


def render(results: Mapping[str, dict[str, Any]]) -> str:
    """The whole of docs/benchmarks.md; each report carries the ``command`` that wrote it."""
    commands = {name: r["command"] for name, r in results.items() if r.get("command")}
    lines = ["# Benchmarks", "",
             "Written by `make bench` from the JSON the bench commands produce -- do not edit by "
             "hand. Every figure comes from replaying real recorded per-model outcomes through "
             "the real request path (LiteLLM over HTTP to the provider simulator, a stand-in for "
             "hosted providers); see `bench/` for how.", "", "## Targets", "",
             "| workload | target | met | figure |", "|---|---|---|---|"]
    for t in targets(results):
        mark = {True: "yes", False: "**no**", None: "n/a"}[t.met]
        lines.append(f"| {t.workload} | {t.text} | {mark} | {t.figure} |")
    for name, report in results.items():
        if "approaches" not in report:
            continue
        lines += ["", f"## {name}", "",
                  f"{report['rows']} rows ({report.get('rows_source', '')}); tiers "
                  f"{', '.join(report['tiers'])}; classifier `{report.get('classifier')}`, "
                  f"scorer `{report.get('scorer')}`; thresholds {report['settings']} "
                  f"({report.get('threshold_source')}).", ""]
        if name in commands:
            lines += [f"Command: `{commands[name]}`", ""]
        lines += [*_approach_table(report), "", *_aiq_table(report), "", _diagnosis(report)]
        if "frontier_share_for_95pct_quality" in report:
            shares = report["frontier_share_for_95pct_quality"]
            lines += ["", "Frontier-call share needed for 95% of frontier quality: " + ", ".join(
                f"{k.replace('_', ' ')} {_pct(v)}" for k, v in shares.items()) + "."]
        lines += ["", f"![{name} curves](benchmarks/{name}.png)"]
    for name in ("paraphrase", "overhead"):
        if name in results:
            lines += ["", f"## {name}", ""]
            if name in commands:
                lines += [f"Command: `{commands[name]}`", ""]
            lines += ["```json", json.dumps(results[name], indent=1)[:6000], "```"]
    return "\n".join(lines) + "\n"
