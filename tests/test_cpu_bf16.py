"""bf16 only where this CPU computes it natively: the probe, the demo's float32 fallback, the training warning."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.settings import preflight
from pipeline.settings.cpu_bf16 import cpu_bf16_is_native, float32_where_bf16_is_slow
from pipeline.settings.demo_recipes import PROFILES, fill_paths, write_recipes

FULL = PROFILES["full"]


@pytest.mark.skipif(platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(), reason="x86 Linux")
def test_the_probe_agrees_with_the_cpu_flags_the_kernel_reports():
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert cpu_bf16_is_native() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_without_native_bf16_the_demo_writes_float32_recipes_and_says_which_fields(tmp_path):
    paths, float32 = write_recipes(tmp_path, FULL, bf16_native=False)
    assert float32["sft"] == ["bf16"] and float32["grpo"] == ["bf16", "generation_dtype"]
    assert "teacher" not in float32
    sft, grpo, evaluate = (yaml.safe_load(paths[n].read_text()) for n in ("sft", "grpo", "eval"))
    assert sft["bf16"] is False and grpo["bf16"] is False and sft["use_cpu"] is True
    assert grpo["generation_dtype"] is None
    assert {m["dtype"] for m in evaluate["models"].values() if m["kind"] == "hf"} == {"float32"}
    assert "# float32, not bf16, for bf16: this CPU has no native bf16" in paths["sft"].read_text()
    assert "models.sft_t1.dtype" in paths["eval"].read_text().splitlines()[1]
    # everything else as the recipe says
    assert {k: v for k, v in sft.items() if k != "bf16"} == {
        k: v for k, v in fill_paths(FULL.recipes["sft"], tmp_path).items() if k != "bf16"
    }


def test_with_native_bf16_the_recipes_are_written_as_they_stand(tmp_path):
    paths, float32 = write_recipes(tmp_path, FULL, bf16_native=True)
    assert float32 == {}
    assert yaml.safe_load(paths["sft"].read_text()) == fill_paths(FULL.recipes["sft"], tmp_path)
    assert all("float32, not bf16" not in p.read_text() for p in paths.values())


def test_only_cpu_training_and_local_hf_policies_are_changed():
    gpu = {"bf16": True, "models": {"api": {"kind": "openai", "dtype": "bfloat16"}, "hf": {"kind": "hf"}}}
    assert float32_where_bf16_is_slow(gpu, native=False) == [] and gpu["bf16"] is True
    collect = {"policy": {"kind": "hf", "dtype": "bfloat16"}}
    assert float32_where_bf16_is_slow(collect, native=False) == ["policy.dtype"]
    assert collect["policy"]["dtype"] == "float32"


def test_training_with_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog, tmp_path):
    args = SimpleNamespace(bf16=True, use_cpu=True, report_to=[], push_to_hub=False)
    monkeypatch.setattr(preflight, "cpu_bf16_is_native", lambda: False)  # the CPU probe is tested above
    with caplog.at_level(logging.WARNING, logger="pipeline.settings.preflight"):
        preflight.check_training("sft.yaml", str(tmp_path), args)
    assert "sft.yaml: bf16: true with use_cpu on a CPU without native bf16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(preflight, "cpu_bf16_is_native", lambda: True)
    preflight.check_training("sft.yaml", str(tmp_path), args)
    assert "native bf16" not in caplog.text
