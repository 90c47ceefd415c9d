"""docs/benchmarks.md, written from the benchmark JSON files (never by hand).

``render(results)`` takes ``{name: report}`` as the bench commands wrote them -- outcome workloads
(``routerbench``, ``mmlu``, ``gsm8k``, ``mixed``...), ``paraphrase`` and ``overhead`` -- and
returns the Markdown: per workload the approaches at the stored operating point, the headline
figures, the val-fixed curves' AIQ with the paired bootstrap intervals of the differences, and
every target marked met or missed with the figure that decides it. A report from an older bench
(another ``report_format``) is named as such instead of being misread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_FORMAT = 2  # bench.run.REPORT_FORMAT (not imported: rendering needs no numpy stack)
WORKLOAD_ORDER = ("routerbench", "mmlu", "gsm8k", "mixed", "paraphrase", "overhead")
APPROACH_ORDER = ("frontier_only", "medium_only", "simple_only", "routing_only", "cascade_only",
                  "hybrid", "hybrid_no_overrides", "hybrid_no_medium", "random_mix",
                  "best_fixed_mix", "per_category_mix", "oracle")
MIXED_PARTS = ("support", "mmlu", "routerbench", "gsm8k", "high_stakes")


@dataclass(frozen=True)
class Target:
    workload: str
    text: str
    met: bool | None  # None: the figure is missing (or, with ``reported``, no threshold)
    figure: str
    reported: bool = False  # a figure asked for without a threshold: shown, not judged


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` in ``folder`` by file stem."""
    found = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    rank = {name: i for i, name in enumerate(WORKLOAD_ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _usd(x: float) -> str:
    return f"${x * 1000:.3f}e-3"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _get(report: Mapping[str, Any] | None, *keys: str) -> Any:
    """``report[k1][k2]...`` or None where any level is missing."""
    value: Any = report
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def current(report: Mapping[str, Any]) -> bool:
    """An outcome report in the format this renderer reads."""
    return report.get("report_format") == REPORT_FORMAT


def _difference(report: Mapping[str, Any], base: str) -> dict[str, Any] | None:
    return _get(report, "aiq", "differences", f"hybrid_minus_{base}")


def _diff_figure(d: Mapping[str, Any] | None) -> str:
    if d is None:
        return "n/a"
    return f"{d['aiq']:+.4f} (95% CI {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f})"


def _aiq_target(workload: str, report: Mapping[str, Any], base: str, text: str,
                bound: float, strict: bool) -> Target:
    """hybrid AIQ - ``base`` (val-fixed point estimate) against ``bound``."""
    d = _difference(report, base)
    met = None if d is None else (d["aiq"] > bound if strict else d["aiq"] >= bound)
    return Target(workload, text, met, _diff_figure(d))


def _share_target(workload: str, report: Mapping[str, Any], key: str, text: str,
                  bound: float) -> Target:
    shares = report.get("frontier_share_for_95pct_quality") or {}
    share = shares.get(key)
    others = ", ".join(f"{k.replace('_', ' ')} {_pct(v)}" for k, v in shares.items()
                       if k != key)
    return Target(workload, text, None if share is None else share <= bound,
                  f"{_pct(share)}" + (f" ({others})" if others else "")
                  if key in shares else "n/a")


def _routerbench_targets(rb: Mapping[str, Any]) -> list[Target]:
    out = [
        _aiq_target("routerbench", rb, "per_category_mix",
                    "hybrid AIQ - per_category_mix >= -0.01 (val-fixed, point estimate)",
                    -0.01, strict=False),
        _aiq_target("routerbench", rb, "best_fixed_mix",
                    "hybrid AIQ - best_fixed_mix > 0 (val-fixed, point estimate)", 0.0,
                    strict=True),
    ]
    at = _get(rb, "headline", "cost_ratio_at_95pct_quality")
    out.append(Target("routerbench", "cost at 95% of frontier quality <= 40% (hybrid, "
                      "val-fixed curve)", None if at is None else at <= 0.40,
                      "not reached" if at is None else f"{_pct(at)} of frontier cost"))
    stored = _get(rb, "headline", "stored_point") or {}
    q, c = stored.get("quality_ratio"), stored.get("cost_ratio")
    out.append(Target("routerbench", "stored point: >= 95% of frontier quality at <= 50% of "
                      "its cost", None if q is None or c is None else q >= 0.95 and c <= 0.50,
                      f"{_pct(q)} of frontier quality at {_pct(c)} of its cost"))
    d = _difference(rb, "hybrid_no_medium")
    no_medium = _get(rb, "aiq", "hybrid_no_medium")
    out.append(Target(
        "routerbench", "AIQ with medium disabled (val-fixed; does medium pay?)", None,
        "n/a" if d is None else f"AIQ {no_medium:.4f} vs hybrid {rb['aiq']['hybrid']:.4f}; "
        f"hybrid - no medium {_diff_figure(d)}", reported=True))
    return out


def _mixed_targets(mixed: Mapping[str, Any]) -> list[Target]:
    h, f = _get(mixed, "approaches", "hybrid"), _get(mixed, "approaches", "frontier_only")
    if h is None or f is None:
        return [Target("mixed", "the stored point's table", None, "n/a")]
    parts = _get(mixed, "by_group", "hybrid") or {}
    per_part = ", ".join(f"{p} {_pct(parts[p]['escalation_rate'])}" for p in MIXED_PARTS
                         if p in parts)
    quality_ok = (None if h["quality"] is None or f["quality"] is None
                  else h["quality"] >= f["quality"] - 0.02)
    return [
        Target("mixed", "stored point, cache off: >= 65% cheaper than frontier-only",
               h["cost_per_task"] <= 0.35 * f["cost_per_task"],
               f"{_pct(1 - h['cost_per_task'] / f['cost_per_task'])} cheaper"),
        Target("mixed", "quality >= frontier-only's - 0.02", quality_ok,
               f"{_num(h['quality'])} vs {_num(f['quality'])}"),
        Target("mixed", "escalation rate <= 5%", h["escalation_rate"] <= 0.05,
               f"{_pct(h['escalation_rate'])}" + (f" ({per_part})" if per_part else "")),
        Target("mixed", "p95 <= 0.75x frontier-only's",
               h["p95_latency_ms"] <= 0.75 * f["p95_latency_ms"],
               f"{h['p95_latency_ms']:.0f} ms vs {f['p95_latency_ms']:.0f} ms "
               f"({h['p95_latency_ms'] / f['p95_latency_ms']:.2f}x)"),
    ]


def targets(results: Mapping[str, dict[str, Any]]) -> list[Target]:
    """The routing issue's targets, each judged on the figure the report holds."""
    out: list[Target] = []
    for name in ("routerbench", "mmlu", "gsm8k", "mixed"):
        report = results.get(name)
        if report is not None and not current(report):
            out.append(Target(name, "every target", None, "report from an older bench "
                              f"(format {report.get('report_format', 1)}): re-run `make bench`"))
    rb = results.get("routerbench")
    if rb and current(rb):
        out += _routerbench_targets(rb)
    mmlu = results.get("mmlu")
    if mmlu and current(mmlu):
        out.append(_share_target("mmlu", mmlu, "without_overrides",
                                 "GPT-4 call share at 95% of GPT-4 accuracy <= 56% (no "
                                 "overrides, val-fixed curve)", 0.56))
    gsm = results.get("gsm8k")
    if gsm and current(gsm):
        out += [
            _aiq_target("gsm8k", gsm, "best_fixed_mix",
                        "hybrid AIQ - best_fixed_mix >= +0.03 (val-fixed, point estimate)",
                        0.03, strict=False),
            _aiq_target("gsm8k", gsm, "cascade_only",
                        "hybrid AIQ above cascade_only (val-fixed, point estimate)", 0.0,
                        strict=True),
            _share_target("gsm8k", gsm, "with_overrides",
                          "GPT-4 call share at 95% of GPT-4 accuracy <= 55% (val-fixed curve)",
                          0.55),
        ]
    mixed = results.get("mixed")
    if mixed and current(mixed):
        out += _mixed_targets(mixed)
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


def _approach_table(report: Mapping[str, Any]) -> list[str]:
    lines = ["| approach | cost per task | vs frontier | p50 latency | p95 latency | "
             "quality (95% CI) | escalation | frontier calls | calls per request |",
             "|---|---|---|---|---|---|---|---|---|"]
    frontier_cost = report["approaches"]["frontier_only"]["cost_per_task"]
    names = [n for n in APPROACH_ORDER if n in report["approaches"]]
    names += sorted(set(report["approaches"]) - set(names))
    for name in names:
        row = report["approaches"][name]
        low, high = row["quality_ci"]
        label = f"**{name}**" if name == "hybrid" else name
        lines.append(
            f"| {label} | {_usd(row['cost_per_task'])} | "
            f"{_pct(row['cost_per_task'] / frontier_cost)} | {row['p50_latency_ms']:.0f} ms | "
            f"{row['p95_latency_ms']:.0f} ms | {_num(row['quality'])} ({low:.3f} to "
            f"{high:.3f}) | {_pct(row['escalation_rate'])} | "
            f"{_pct(row['frontier_call_share'])} | {row.get('mean_calls', 1.0):.2f} |")
    return lines


def _knob_text(kept: list[dict[str, Any]]) -> str:
    """The kept settings of a curve, compactly (lambda, threshold, weight or tier)."""
    if not kept:
        return "none (the two endpoints only)"
    parts = []
    for knobs in kept:
        values = {k: v for k, v in knobs.items() if k != "rule"}
        parts.append(", ".join(f"{v:.3g}" if isinstance(v, float) else str(v)
                               for v in values.values()))
    name = next((k for k in kept[0] if k != "rule"), "setting")
    return f"{name}: " + "; ".join(parts)


def _aiq_table(report: Mapping[str, Any]) -> list[str]:
    lines = ["| curve | AIQ (val-fixed) | settings kept |", "|---|---|---|"]
    for name, curve in report["curves"].items():
        grid = len(_get(report, "sweeps", name, "knobs") or [])
        kept = (f"all {grid} grid points" if grid and len(curve["kept"]) == grid
                else f"{len(curve['kept'])} of {grid or '?'} ({_knob_text(curve['kept'])})")
        lines.append(f"| {name} | {report['aiq'][name]:.4f} | {kept} |")
    boot = report["aiq"].get("bootstrap")
    lines += ["", f"| difference | AIQ | 95% CI (paired bootstrap over test rows"
              f"{f', {boot} resamples' if boot else ''}) |", "|---|---|---|"]
    lines += [f"| {name} | {d['aiq']:+.4f} | {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f} |"
              for name, d in report["aiq"]["differences"].items()]
    return lines


def _headline(report: Mapping[str, Any]) -> str:
    head = report.get("headline", {})
    stored = head.get("stored_point", {})
    at = head.get("cost_ratio_at_95pct_quality")
    return ("Headline: the hybrid's val-fixed curve reaches 95% of frontier quality at "
            f"{'no cost on the curve (not reached)' if at is None else _pct(at)}"
            f"{'' if at is None else ' of frontier cost'}; the stored point itself: "
            f"{_pct(stored.get('cost_ratio'))} of frontier cost, "
            f"{_pct(stored.get('quality_ratio'))} of frontier quality, escalation rate "
            f"{_pct(stored.get('escalation_rate'))}, frontier calls "
            f"{_pct(stored.get('frontier_call_share'))}, p95 latency "
            f"{_num(stored.get('p95_latency_ratio'), '.2f')}x frontier-only's.")


def _diagnosis(report: Mapping[str, Any]) -> str:
    """What each part adds, from the val-fixed AIQs: the classifier (routing vs the zero
    router), the scorer (cascade vs a random mix of its two ends), the two together (hybrid vs
    routing), and a rule by category."""
    a = report["aiq"]
    return ("What each part adds (AIQ points, val-fixed): the classifier "
            f"{a['routing_only'] - a['best_fixed_mix']:+.4f} (routing-only minus best fixed "
            f"mix), the response scorer {a['cascade_only'] - a['random_mix']:+.4f} "
            "(cascade-only minus random mix), the cascade on top of routing "
            f"{a['hybrid'] - a['routing_only']:+.4f} (hybrid minus routing-only), a rule by "
            f"category {a['per_category_mix'] - a['best_fixed_mix']:+.4f} (per-category minus "
            "best fixed mix).")


def _point_text(report: Mapping[str, Any]) -> str:
    point = report["point"]
    return (f"stored operating point lambda {point['price_weight']:.4g} per USD, trust "
            f"{point['trust']:.3g}, escalate {point['escalate']:.3g}, score threshold "
            f"{point['score_threshold']:.3g} ({point['source']}), at most {point['max_calls']} "
            f"calls, cascade {'on' if point['cascade'] else 'off'}")


def _parts_table(report: Mapping[str, Any]) -> list[str]:
    """The mixed workload's stored-point runs by part (escalation per source)."""
    groups = report.get("by_group") or {}
    hybrid, frontier = groups.get("hybrid", {}), groups.get("frontier_only", {})
    if not hybrid:
        return []
    overall = report["approaches"]["hybrid"]
    lines = ["| part | rows | hybrid cost | hybrid quality | frontier-only quality | "
             "escalation | frontier calls | hybrid p95 | frontier-only p95 |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = [p for p in MIXED_PARTS if p in hybrid] + sorted(set(hybrid) - set(MIXED_PARTS))
    for part in names:
        h, f = hybrid[part], frontier.get(part, {})
        lines.append(f"| {part} | {h['rows']} | {_usd(h['cost_per_task'])} | "
                     f"{_num(h['quality'])} | {_num(f.get('quality'))} | "
                     f"{_pct(h['escalation_rate'])} | {_pct(h['frontier_call_share'])} | "
                     f"{h['p95_latency_ms']:.0f} ms | {f.get('p95_latency_ms', 0.0):.0f} ms |")
    f_all = report["approaches"]["frontier_only"]
    lines.append(f"| **all** | {report['rows']} | {_usd(overall['cost_per_task'])} | "
                 f"{_num(overall['quality'])} | {_num(f_all['quality'])} | "
                 f"{_pct(overall['escalation_rate'])} | "
                 f"{_pct(overall['frontier_call_share'])} | "
                 f"{overall['p95_latency_ms']:.0f} ms | {f_all['p95_latency_ms']:.0f} ms |")
    return lines


def _workload_section(name: str, report: Mapping[str, Any], command: str | None) -> list[str]:
    lines = ["", f"## {name}", ""]
    if not current(report):
        return [*lines, f"A report from an older bench (format {report.get('report_format', 1)})"
                ": its rows and curves mean something else. Re-run `make bench`."]
    cache = " Cache off." if report.get("cache") == "off" else ""
    lines += [f"{report['rows']} test rows ({report.get('rows_source', '')}); validation: "
              f"{report.get('validation', 'n/a')}; tiers {', '.join(report['tiers'])}; "
              f"classifier `{report.get('classifier')}`, scorer `{report.get('scorer')}`; "
              f"{_point_text(report)}.{cache}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [*_approach_table(report), "", _headline(report)]
    if "frontier_share_for_95pct_quality" in report:
        shares = report["frontier_share_for_95pct_quality"]
        lines += ["", "GPT-4 (frontier) call share needed for 95% of frontier quality on the "
                  "val-fixed curves (share on the x axis, the same kept settings): " + ", ".join(
                      f"{k.replace('_', ' ')} {_pct(v)}" for k, v in shares.items()) + "."]
    parts = _parts_table(report)
    if parts:
        lines += ["", "By part, at the stored point:", "", *parts]
    lines += ["", f"Curves: {report.get('curve_protocol', '')}. {_grid_text(report)}", "",
              *_aiq_table(report), "", _diagnosis(report), "",
              f"![{name} curves](benchmarks/{name}.png)"]
    return lines


def _grid_text(report: Mapping[str, Any]) -> str:
    """The grids the curves were swept on, from the report itself."""
    grids = report.get("grids") or {}

    def span(key: str) -> str:
        values = grids.get(key) or []
        positive = [v for v in values if v > 0]
        if not positive:
            return f"{len(values)} values"
        return (f"{len(values)} values ({'0 and ' if len(positive) < len(values) else ''}"
                f"{min(positive):.3g} to {max(positive):.3g})")

    return (f"The hybrid's curves vary lambda alone over {span('price_weight')} per USD, the "
            "stored value included, every other knob at its stored value; cascade-only varies "
            f"the score threshold over {span('score_threshold')}, per-category the cost weight "
            f"over {span('cost_weight')}; every curve also has the cheapest single tier and "
            "frontier-only as endpoints.")


def render(results: Mapping[str, dict[str, Any]]) -> str:
    """The whole of docs/benchmarks.md; each report carries the ``command`` that wrote it."""
    commands = {name: r["command"] for name, r in results.items() if r.get("command")}
    lines = ["# Benchmarks", "",
             "Written by `make bench` from the JSON the bench commands produce -- do not edit by "
             "hand. Every figure comes from replaying real recorded per-model outcomes through "
             "the real request path (LiteLLM over HTTP to the provider simulator, a stand-in for "
             "hosted providers); see `bench/` for how. The `hybrid` row is the shipped champion "
             "at its stored operating point (never refit per workload); curves and AIQ are "
             "val-fixed: knob settings kept on the validation upper envelope, their test points "
             "joined linearly, no envelope on test.", "", "## Targets", "",
             "| workload | target | met | figure |", "|---|---|---|---|"]
    for t in targets(results):
        mark = "reported" if t.reported else {True: "yes", False: "**no**", None: "n/a"}[t.met]
        lines.append(f"| {t.workload} | {t.text} | {mark} | {t.figure} |")
    for name, report in results.items():
        if "approaches" not in report:
            continue
        lines += _workload_section(name, report, commands.get(name))
    for name in ("paraphrase", "overhead"):
        if name in results:
            lines += ["", f"## {name}", ""]
            if name in commands:
                lines += [f"Command: `{commands[name]}`", ""]
            lines += ["```json", json.dumps(results[name], indent=1)[:6000], "```"]
    return "\n".join(lines) + "\n"
