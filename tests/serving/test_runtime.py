"""The serving runtime in-process: one cache per embedding space, kept across model swaps; a
challenger that appears after start."""

from __future__ import annotations

import shutil
from pathlib import Path

from serving.runtime import Runtime
from serving.settings import ServiceSettings


def test_a_version_that_comes_back_gets_its_own_cache_again(tiny_bert_dir: Path,
                                                            tmp_path: Path) -> None:
    settings = ServiceSettings(classifier=str(tiny_bert_dir), scorer=None,
                               reload_interval_s=0, cache_dir=str(tmp_path / "cache"),
                               decision_log_url=f"sqlite:///{tmp_path / 'd.sqlite'}",
                               decision_spill_path=tmp_path / "spill.jsonl")
    runtime = Runtime(settings).start()
    try:
        first = runtime.policy
        assert first is not None and first.cache is not None
        runtime._install(str(tiny_bert_dir), None)  # the same version again (a rollback)
        assert runtime.policy is not first
        assert runtime.policy.cache is first.cache  # one object per embedding space
        assert len(runtime._caches) == 1
    finally:
        runtime.close()


def test_each_embedding_space_gets_its_own_cache(tiny_bert_dir: Path, tiny_static_dir: Path,
                                                 tmp_path: Path) -> None:
    """A static bundle (16-d token vectors) and a transformer bundle (32-d hidden states) put
    their requests in different spaces: two caches, each reused when its version returns."""
    settings = ServiceSettings(classifier=str(tiny_static_dir), scorer=None,
                               reload_interval_s=0, cache_dir=str(tmp_path / "cache"),
                               decision_log_url=f"sqlite:///{tmp_path / 'd.sqlite'}",
                               decision_spill_path=tmp_path / "spill.jsonl")
    runtime = Runtime(settings).start()
    try:
        static = runtime.policy
        assert static is not None and static.cache is not None
        assert static.point.source == "model:tiny-static"  # the bundle's stored point
        runtime._install(str(tiny_bert_dir), None)
        bert = runtime.policy
        assert bert.cache is not static.cache and len(runtime._caches) == 2
        assert bert.point.source == "config"  # no point stored: the config's defaults
        assert sorted(name.rsplit(":", 1)[1] for name in runtime._caches) == ["16", "32"]
        runtime._install(str(tiny_static_dir), None)
        assert runtime.policy.cache is static.cache and len(runtime._caches) == 2
    finally:
        runtime.close()


def test_a_missing_challenger_is_picked_up_once_it_exists(tiny_bert_dir: Path,
                                                          tmp_path: Path) -> None:
    challenger = tmp_path / "challenger"
    settings = ServiceSettings(classifier=str(tiny_bert_dir), scorer=None,
                               shadow_classifier=str(challenger), reload_interval_s=0,
                               cache_dir=str(tmp_path / "cache"),
                               decision_log_url=f"sqlite:///{tmp_path / 'd.sqlite'}",
                               decision_spill_path=tmp_path / "spill.jsonl")
    runtime = Runtime(settings).start()  # starts without it: serving matters more
    try:
        assert runtime.ready and runtime.shadow is None
        shutil.copytree(tiny_bert_dir, challenger)
        assert runtime.refresh_shadow() is True
        assert runtime.policy is not None and runtime.policy.shadow is runtime.shadow
        assert runtime.refresh_shadow() is False  # nothing new
    finally:
        runtime.close()
