"""Every benchmark script says first which CPU class and precision it measures, and records both."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ltpa.train.precision import cpu_bf16_support

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = {
    "train_throughput": ["--width", "0.0625", "--batch", "2", "--steps", "1", "--warmup", "0"],
    "memory": ["--sizes", "32", "--width", "0.0625"],
    "epoch_throughput": ["--width", "0.0625", "--images", "16", "--batch", "8", "--repeats", "1"],
}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_prints_and_records_the_cpu_class_and_precision(name, tmp_path, capsys):
    assert sorted(p.stem for p in BENCHMARKS.glob("*.py")) == sorted(TINY)  # a new benchmark gets a row here
    out = tmp_path / "result.json"
    _load(name).main([*TINY[name], "--json", str(out)])
    first = capsys.readouterr().out.splitlines()[0]
    capability = torch.backends.cpu.get_cpu_capability()
    precision = "bf16" if cpu_bf16_support().native else "fp32"  # auto on this CPU
    assert first.startswith("CPU ") and f"ATen capability {capability}" in first
    assert f"precision auto -> {precision}" in first
    record = json.loads(out.read_text())
    assert record["cpu_capability"] == capability
    assert record.get("precision_name", record.get("precision")) == precision
    assert record["environment"]["cpu_capability"] == capability
