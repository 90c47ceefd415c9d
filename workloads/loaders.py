"""Readers for the workload layouts in data/ and any other file of the same shape.

Layouts (see data/README.md for sources and licences):

* RouterBench: ``sample_id, eval_name, prompt, <model>..., <model>|total_cost..., [oracle...]``.
  Prompts are Python-list literals of turns; outcome cells are 0.0/1.0, a blank cell is
  *missing*, not wrong. Recorded answers come from ``responses.jsonl.gz`` beside the file.
* RouteLLM MMLU: ``subject, prompt, gold, <model>_correct...`` (booleans).
* RouteLLM GSM8K: ``prompt, <model>..., <model>_response...`` (booleans, full answers).
* RouteLLM MT-Bench: a folder with ``question.jsonl`` and ``judgements.jsonl[.gz]`` (GPT-4 judge
  scores 1-10 per model and turn).
* Intents: Banking77 ``text, category`` CSV; CLINC150 ``data_full.json``.

A file is recognised by its header, not its name. Every reader returns a :class:`Workload`; a
malformed file raises :class:`WorkloadFormatError` naming file, line and column.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from workloads.records import (
    Outcome,
    Workload,
    WorkloadFormatError,
    WorkloadRecord,
    resolve_tier_models,
)

# Single RouterBench prompts run to ~100 kB; the csv module's default cell limit is 128 kB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}
COST_SUFFIX = "|total_cost"


def open_text(path: Path) -> IO[str]:
    """Open a text file, gunzipping transparently when the name ends in ``.gz``."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _csv_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs of a CSV file; line numbers are 1-based."""
    handle = open_text(path)
    reader = csv.DictReader(handle)
    header = list(reader.fieldnames or [])

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        with handle:
            for row in reader:
                if None in row or any(value is None for value in row.values()):
                    raise WorkloadFormatError(
                        f"{path}: line {reader.line_num}: expected {len(header)} cells")
                yield reader.line_num, row

    return header, rows()


def parse_bool(value: str, *, where: str) -> bool | None:
    """A correctness cell: 1/0, 1.0/0.0, True/False, yes/no in any case; blank = None."""
    text = value.strip().lower()
    if text == "":
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise WorkloadFormatError(f"{where}: not a correctness value: {value!r}")


def _parse_cost(value: str, *, where: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        cost = float(value)
    except ValueError:
        raise WorkloadFormatError(f"{where}: not a cost in USD: {value!r}") from None
    if cost < 0:
        raise WorkloadFormatError(f"{where}: negative cost: {value!r}")
    return cost


def parse_turns(value: str, *, where: str) -> tuple[str, ...]:
    """A RouterBench prompt cell: a Python-list literal of turns, or a plain string."""
    if not value.lstrip().startswith("["):
        return (value,)
    try:
        turns = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise WorkloadFormatError(f"{where}: prompt is not a Python list literal") from None
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise WorkloadFormatError(f"{where}: prompt must be a non-empty list of strings")
    return tuple(turns)


def _require(path: Path, header: list[str], columns: list[str]) -> None:
    missing = [column for column in columns if column not in header]
    if missing:
        raise WorkloadFormatError(f"{path}: missing column(s) {missing}; header is {header}")


def _tier_models(path: Path, models: list[str]) -> dict:
    tier_models = resolve_tier_models(models)
    if not tier_models:
        raise WorkloadFormatError(
            f"{path}: none of the models {models} is a known tier model; "
            "see workloads.records.TIER_MODEL_NAMES")
    return tier_models


def load_routerbench(path: Path, responses: Path | None = None) -> Workload:
    """RouterBench layout; ``responses`` defaults to ``responses.jsonl.gz`` beside ``path``."""
    header, rows = _csv_rows(path)
    _require(path, header, ["sample_id", "eval_name", "prompt"])
    models = [c[: -len(COST_SUFFIX)] for c in header if c.endswith(COST_SUFFIX)]
    _require(path, header, models)
    if not models:
        raise WorkloadFormatError(f"{path}: no '<model>{COST_SUFFIX}' columns")
    if responses is None and (path.parent / "responses.jsonl.gz").exists():
        responses = path.parent / "responses.jsonl.gz"
    answers = _routerbench_responses(responses) if responses else {}
    records = []
    for line, row in rows:
        where = f"{path}: line {line}"
        outcomes = {
            model: Outcome(
                correct=parse_bool(row[model], where=f"{where}: column {model!r}"),
                cost_usd=_parse_cost(row[model + COST_SUFFIX],
                                     where=f"{where}: column {model + COST_SUFFIX!r}"),
                response=answers.get((row["sample_id"], model)),
            )
            for model in models
        }
        records.append(WorkloadRecord(
            id=row["sample_id"], source="routerbench", category=row["eval_name"],
            turns=parse_turns(row["prompt"], where=f"{where}: column 'prompt'"),
            outcomes=outcomes))
    return Workload("routerbench", str(path), records, _tier_models(path, models))


def _routerbench_responses(path: Path) -> dict[tuple[str, str], str]:
    """``(sample_id, model) -> answer``; answers are stored as Python-list literals too."""
    answers = {}
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, 1):
            try:
                item = json.loads(line)
                sample_id, model, response = item["sample_id"], item["model"], item["response"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise WorkloadFormatError(f"{path}: line {line_number}: {exc}") from None
            try:
                parts = ast.literal_eval(response) if response.startswith("[") else [response]
            except (ValueError, SyntaxError):
                parts = [response]
            answers[(sample_id, model)] = "\n".join(str(part) for part in parts)
    return answers


def load_mmlu(path: Path) -> Workload:
    """RouteLLM MMLU layout: ``subject, prompt, gold, <model>_correct...``."""
    header, rows = _csv_rows(path)
    _require(path, header, ["prompt"])
    models = [c[: -len("_correct")] for c in header if c.endswith("_correct")]
    records = []
    for index, (line, row) in enumerate(rows):
        where = f"{path}: line {line}"
        outcomes = {model: Outcome(correct=parse_bool(row[model + "_correct"],
                                                      where=f"{where}: column {model}_correct"))
                    for model in models}
        records.append(WorkloadRecord(
            id=f"mmlu.{index}", source="mmlu", category=row.get("subject") or "mmlu",
            turns=(row["prompt"],), outcomes=outcomes, gold=row.get("gold") or None))
    return Workload("mmlu", str(path), records, _tier_models(path, models))


def load_gsm8k(path: Path) -> Workload:
    """RouteLLM GSM8K layout: ``prompt, <model>..., <model>_response...``."""
    header, rows = _csv_rows(path)
    _require(path, header, ["prompt"])
    models = [c for c in header if c + "_response" in header]
    records = []
    for index, (line, row) in enumerate(rows):
        where = f"{path}: line {line}"
        outcomes = {model: Outcome(correct=parse_bool(row[model], where=f"{where}: column {model}"),
                                   response=row[model + "_response"] or None)
                    for model in models}
        records.append(WorkloadRecord(id=f"gsm8k.{index}", source="gsm8k", category="gsm8k",
                                      turns=(row["prompt"],), outcomes=outcomes))
    return Workload("gsm8k", str(path), records, _tier_models(path, models))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    items = []
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise WorkloadFormatError(f"{path}: line {line_number}: {exc}") from None
    return items


_SINGLE_ANSWER = re.compile(
    r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
_CONVERSATION = re.compile(
    r"<\|The Start of Assistant A's Conversation with User\|>(.*?)"
    r"<\|The End of Assistant A's Conversation with User\|>", re.S)


def _judged_answer(user_prompt: str, turn: int) -> str | None:
    """The answer the judge saw for ``turn``, cut out of the judge's prompt (None if absent)."""
    if turn == 1:
        match = _SINGLE_ANSWER.search(user_prompt)
        return match.group(1).strip() if match else None
    match = _CONVERSATION.search(user_prompt)
    if not match:
        return None
    answers = match.group(1).split("### Assistant A:\n")
    return answers[-1].strip() if len(answers) > turn - 1 else None


def load_mt_bench(folder: Path) -> Workload:
    """RouteLLM MT-Bench: one record per question *and turn* (turn 2 carries both user turns).

    Outcomes carry ``score`` = judge score / 10 and ``correct`` = None: the data grades answers
    rather than marking them right or wrong.
    """
    questions = _read_jsonl(folder / "question.jsonl")
    judgements_path = next((p for p in (folder / "judgements.jsonl.gz",
                                        folder / "judgements.jsonl") if p.exists()), None)
    if judgements_path is None:
        raise WorkloadFormatError(f"{folder}: no judgements.jsonl[.gz]")
    outcomes: dict[tuple[int, int], dict[str, Outcome]] = {}
    for item in _read_jsonl(judgements_path):
        try:
            key, model, score = (item["question_id"], item["turn"]), item["model"], item["score"]
        except KeyError as exc:
            raise WorkloadFormatError(f"{judgements_path}: judgement without {exc}") from None
        outcomes.setdefault(key, {})[model] = Outcome(
            correct=None, score=float(score) / 10,
            response=_judged_answer(item.get("user_prompt", ""), item["turn"]))
    records = []
    for question in questions:
        turns = tuple(question["turns"])
        for turn in range(1, len(turns) + 1):
            records.append(WorkloadRecord(
                id=f"mt_bench.{question['question_id']}.t{turn}", source="mt_bench",
                category=question.get("category", "mt_bench"), turns=turns[:turn],
                outcomes=outcomes.get((question["question_id"], turn), {})))
    models = sorted({model for item in outcomes.values() for model in item})
    return Workload("mt_bench", str(folder), records, _tier_models(folder, models))


def load_intents_csv(path: Path, name: str = "banking77") -> Workload:
    """``text, category`` CSV (Banking77). No model outcomes."""
    header, rows = _csv_rows(path)
    _require(path, header, ["text", "category"])
    split = path.name.split(".")[0]
    records = [WorkloadRecord(id=f"{name}.{split}.{index}", source=name,
                              category=row["category"], turns=(row["text"],))
               for index, (_, row) in enumerate(rows)]
    return Workload(name, str(path), records, {})


def load_clinc150(path: Path, splits: tuple[str, ...] | None = None) -> Workload:
    """CLINC150 ``data_full.json``: ``{split: [[text, intent], ...]}``; all splits by default."""
    with open_text(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise WorkloadFormatError(f"{path}: {exc}") from None
    records = []
    for split in splits or tuple(data):
        if split not in data:
            raise WorkloadFormatError(f"{path}: no split {split!r}; has {sorted(data)}")
        for index, pair in enumerate(data[split]):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise WorkloadFormatError(f"{path}: {split}[{index}]: expected [text, intent]")
            records.append(WorkloadRecord(id=f"clinc150.{split}.{index}", source="clinc150",
                                          category=pair[1], turns=(pair[0],)))
    return Workload("clinc150", str(path), records, {})


def load_workload_file(path: Path) -> Workload:
    """Load any file or folder in a known layout, recognised by its header or contents."""
    if path.is_dir():
        if (path / "question.jsonl").exists():
            return load_mt_bench(path)
        raise WorkloadFormatError(f"{path}: a folder must hold MT-Bench's question.jsonl")
    if not path.exists():
        raise WorkloadFormatError(f"{path}: no such file")
    stem = path.name.removesuffix(".gz")
    if stem.endswith(".json"):
        return load_clinc150(path)
    if not stem.endswith(".csv"):
        raise WorkloadFormatError(f"{path}: expected a .csv, .json (optionally .gz) or a folder")
    with open_text(path) as handle:
        header = next(csv.reader(handle), [])
    if {"sample_id", "eval_name", "prompt"} <= set(header):
        return load_routerbench(path)
    if "prompt" in header and any(c.endswith("_correct") for c in header):
        return load_mmlu(path)
    if "prompt" in header and any(c + "_response" in header for c in header):
        return load_gsm8k(path)
    if {"text", "category"} <= set(header):
        return load_intents_csv(path)
    raise WorkloadFormatError(f"{path}: header {header} matches no known layout "
                              "(RouterBench, RouteLLM MMLU/GSM8K, text/category intents)")
