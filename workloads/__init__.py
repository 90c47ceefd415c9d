"""Workload data: real public prompts with per-model recorded outcomes (see data/README.md).

``load_workload("routerbench")`` reads a built-in data set from the project's ``data/`` folder;
``load_workload(Path("my.csv"))`` reads any file of a known layout.
"""

from __future__ import annotations

from pathlib import Path

from workloads.loaders import (
    load_clinc150,
    load_gsm8k,
    load_intents_csv,
    load_mmlu,
    load_mt_bench,
    load_routerbench,
    load_workload_file,
)
from workloads.records import Outcome, Workload, WorkloadFormatError, WorkloadRecord

# Built-in name -> path under the data folder.
BUILTIN: dict[str, str] = {
    "routerbench": "routerbench/outcomes.csv.gz",
    "mmlu": "routellm/mmlu.csv.gz",
    "gsm8k": "routellm/gsm8k.csv.gz",
    "mt_bench": "routellm/mt_bench",
    "banking77": "intents/banking77",
    "clinc150": "intents/clinc150/data_full.json.gz",
}
# Built-ins with model outcomes, i.e. the ones a provider simulator can replay.
OUTCOME_WORKLOADS = ("routerbench", "mmlu", "gsm8k", "mt_bench")


def default_data_dir() -> Path:
    """The repository's ``data/`` folder (this package sits beside it)."""
    return Path(__file__).resolve().parent.parent / "data"


def load_workload(name_or_path: str | Path, data_dir: Path | None = None) -> Workload:
    """A built-in workload by name, or a file / folder in a known layout by path."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN:
        path = (data_dir or default_data_dir()) / BUILTIN[name_or_path]
        if name_or_path == "banking77":
            parts = [load_intents_csv(path / f"{split}.csv.gz") for split in ("train", "test")]
            return Workload("banking77", str(path),
                            [record for part in parts for record in part.records], {})
        return load_workload_file(path)
    path = Path(name_or_path)
    if not path.exists():
        raise WorkloadFormatError(
            f"{name_or_path}: neither a built-in workload ({', '.join(BUILTIN)}) nor a path")
    return load_workload_file(path)


__all__ = [
    "BUILTIN",
    "OUTCOME_WORKLOADS",
    "Outcome",
    "Workload",
    "WorkloadFormatError",
    "WorkloadRecord",
    "default_data_dir",
    "load_clinc150",
    "load_gsm8k",
    "load_intents_csv",
    "load_mmlu",
    "load_mt_bench",
    "load_routerbench",
    "load_workload",
    "load_workload_file",
]
