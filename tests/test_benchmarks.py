"""Every benchmark script says first which CPU class and precision it measures, and records both."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ltpa.train.precision import cpu_bf16_support

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = {
    "train_throughput": ["--width", "0.0625", "--batch", "2", "--steps", "1", "--warmup", "0", "--gemm-size", "128"],
    "memory": ["--sizes", "32", "--width", "0.0625"],
    "conv_passes": ["--width", "0.0625", "--batch", "2", "--reps", "1", "--layout", "channels_last", "--gemm-size", "128"],
    "epoch_throughput": ["--width", "0.0625", "--images", "16", "--batch", "8", "--repeats", "1"],
    "localise_speed": ["--images", "8", "--faithfulness-images", "4", "--width", "0.0625", "--batch", "4"],
    "step_changes": ["--width", "0.0625", "--batch", "2", "--steps", "1", "--rounds", "1"],
    "gpu": ["--tiny", "--skip", "trainer"],  # the trainer section runs in its own test below
    "demo_recipe": ["--seeds", "0", "1", "--set", "model_options.width=0.0625", "--set", "num_train=40",
                    "--set", "num_test=16", "--set", "epochs=1", "--set", "batch_size=8", "--set", "tensorboard=false"],
    "presets_time_to_accuracy": [
        "--data", "synthetic", "--presets", "cifar100-vgg-att3-cpu", "--seeds", "0", "--epochs", "2", "--set",
        "num_classes=10", "model_options.width=0.0625", "subset_train=0", "subset_test=0", "num_train=40",
        "num_test=16", "batch_size=8", "tensorboard=false"],
}
SLOW = {"gpu"}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(TINY)])
def test_benchmark_prints_and_records_the_cpu_class_and_precision(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a benchmark that trains writes its runs under the working directory
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


def test_train_throughput_counts_flops_and_shares_of_the_roofline_it_measured(tmp_path):
    module = _load("train_throughput")
    full = module.argparse.Namespace(model="vgg_att3", width=1.0, size=32, batch=2)
    assert module.gflop_per_image(full, torch.device("cpu")) == pytest.approx(22.72, abs=0.01)  # the 22.7
    out = tmp_path / "result.json"
    module.main([*TINY["train_throughput"], "--gemm-size", "128", "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["gemm_gflops"]["fp32"] > 0 and record["gflop_per_image"] > 0
    for dtype, kernels in record["gemm_kernels"].items():  # the roofline is the best GEMM kernel
        assert "torch.mm" in kernels and record["gemm_gflops"][dtype] == max(kernels.values())
    peer, *others = record["results"]
    assert peer["path"].startswith("fp32 NCHW eager") and peer["precision"] == "fp32"
    for row in record["results"]:
        expected = row["img_per_s"] * record["gflop_per_image"] / record["gemm_gflops"][row["precision"]]
        assert row["roofline_share"] == pytest.approx(expected)
    fast = next(r for r in others if r["path"] == record["fast_path"])
    assert record["speedup"] == pytest.approx(fast["img_per_s"] / peer["img_per_s"])


def test_conv_passes_times_each_pass_of_every_conv_the_model_runs(tmp_path):
    module = _load("conv_passes")
    layers = module.conv_layers("vgg_att3", 0.0625, 32, 2)
    model = module.ltpa.create_model("vgg_att3", num_classes=100, width=0.0625)
    trunk = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n.startswith("trunk.")]
    assert [layer["name"] for layer in layers] == trunk and len(trunk) == 15
    assert layers[0]["input"] == (2, 3, 32, 32)
    out = tmp_path / "result.json"
    module.main(["--width", "0.0625", "--batch", "2", "--reps", "1", "--gemm-size", "128", "--json", str(out)])
    record = json.loads(out.read_text())
    assert set(record["layouts"]) == {"channels_last", "NCHW"}
    for layout in record["layouts"].values():
        rows = layout["layers"]
        assert [r["name"] for r in rows] == [layer["name"] for layer in layers]
        assert rows[0]["grad_input_s"] == 0.0  # the image needs no gradient
        assert all(r["forward_s"] > 0 and r["grad_weight_s"] > 0 for r in rows)
        assert all(r["grad_input_s"] > 0 for r in rows[1:])
        second = rows[1]  # 3x3 conv, stride 1, pad 1: 2 x B x H x W x C_out x C_in x 9 FLOPs
        b, c_in, h, w = second["input"]
        assert second["gflop"] == pytest.approx(2 * b * h * w * second["weight"][0] * c_in * 9 / 1e9)
        for name in ("forward", "grad_input", "grad_weight"):
            assert layout["totals_s"][name] == pytest.approx(sum(r[f"{name}_s"] for r in rows))
    # each timed pass computes what its name says
    layer = layers[1]
    for channels_last in (True, False):
        passes = module.layer_passes(layer, channels_last)
        assert passes["forward"]().shape == layer["output"]
        grad_input, grad_weight, grad_bias = passes["grad_input"]()
        assert grad_input.shape == layer["input"] and grad_weight is None and grad_bias is None
        grad_input, grad_weight, grad_bias = passes["grad_weight"]()
        assert grad_input is None and grad_weight.shape == layer["weight"] and grad_bias is None


@pytest.mark.slow
def test_gpu_script_runs_every_section_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    module = _load("gpu")
    sample = module._default_cifar()
    data = sample if Path(sample).is_dir() else "synthetic"  # the real sample where CI has it
    assert module.main(["--tiny", "--skip", "tests", "--cifar", data, "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["sections"]) == {"throughput", "trainer", "memory"}
    assert all(section["ok"] for section in record["sections"].values())
    trainer = record["sections"]["trainer"]["result"]
    assert trainer["epochs"] == 1 and trainer["model_only_img_per_s"] > 0
    assert trainer["projected_300_epochs_min"] == pytest.approx(
        300 * trainer["epoch_seconds"][-1] * 50_000 / trainer["train_images_per_epoch"] / 60)
    assert [row["size"] for row in record["sections"]["memory"]["result"]] == [80, 96]
    assert "projected 300 CIFAR-100 epochs" in capsys.readouterr().out


def test_time_to_accuracy_reports_cumulative_wall_time_per_epoch(tmp_path):
    out = tmp_path / "tta.json"
    _load("presets_time_to_accuracy").main([*TINY["presets_time_to_accuracy"], "--out", str(tmp_path / "runs"),
                                           "--json", str(out)])
    (run,) = json.loads(out.read_text())["runs"]
    records = [json.loads(line) for line in (tmp_path / "runs" / "cifar100-vgg-att3-cpu-s0" / "metrics.jsonl")
               .read_text().splitlines()]
    assert [p["epoch"] for p in run["curve"]] == [1, 2]
    assert [p["wall_s"] for p in run["curve"]] == pytest.approx([records[0]["seconds"],
                                                                records[0]["seconds"] + records[1]["seconds"]])
    assert [p["val_acc1"] for p in run["curve"]] == [r["val_acc1"] for r in records]


def test_demo_recipe_reports_every_seed_as_the_demo_scores_it(tmp_path):
    out = tmp_path / "recipe.json"
    _load("demo_recipe").main([*TINY["demo_recipe"], "--out", str(tmp_path / "runs"), "--json", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    for record in runs:
        folder = tmp_path / "runs" / f"seed{record['seed']}"
        final = json.loads((folder / "final_metrics.json").read_text())
        scored = json.loads((folder / "localisation.json").read_text())
        assert record["test_acc1"] == round(final["test"]["acc1"], 1)
        assert record["pointing"] == {k: round(v["pointing"], 3) for k, v in scored["levels"].items()}
        assert record["pointing_within"] == {k: round(v["pointing_near"], 3) for k, v in scored["levels"].items()}
        assert record["best_pointing_within"] == max(record["pointing_within"].values())
        assert record["near_px"] == round(scored["near"], 3) == round(15 * 32 / 224, 3)
        assert json.loads((folder / "config.json").read_text())["optimisation"]["seed"] == record["seed"]


def test_demo_recipe_per_epoch_scores_every_epoch_checkpoint(tmp_path, capsys):
    out = tmp_path / "recipe.json"
    assert TINY["demo_recipe"][:3] == ["--seeds", "0", "1"]
    four_epochs = ["epochs=4" if a == "epochs=1" else a for a in TINY["demo_recipe"][3:]]
    _load("demo_recipe").main(["--seeds", "0", *four_epochs, "--out", str(tmp_path / "runs"), "--json", str(out),
                               "--per-epoch"])
    (record,) = json.loads(out.read_text())["runs"]
    epochs = record["per_epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]  # keep_last=0: the default keeps the last two and the best
    tested = epochs[record["tested_epoch"] - 1]  # the best checkpoint is that epoch's weights, scored alike
    assert tested["pointing"] == record["pointing"] and tested["pointing_within"] == record["pointing_within"]
    assert all(e["best_pointing"] == max(e["pointing"].values()) for e in epochs)
    assert "seed 0 epoch 4: " in capsys.readouterr().out


def test_step_changes_times_the_former_code_and_puts_the_current_back(tmp_path):
    import ltpa.models.blocks as blocks

    module = _load("step_changes")
    current = blocks._weighted_sum, blocks.Dropout.forward
    with module.VARIANTS["former aggregation"]():
        assert blocks._weighted_sum is module._former_weighted_sum
    with module.VARIANTS["former dropout mask"]():
        assert blocks.Dropout.forward is module._former_dropout
    out = tmp_path / "result.json"
    module.main([*TINY["step_changes"], "--json", str(out)])
    assert (blocks._weighted_sum, blocks.Dropout.forward) == current
    record = json.loads(out.read_text())
    assert set(record["img_per_s"]) == {"current", "former aggregation", "former dropout mask"}
    assert record["speedup_over_former"]["current"] == 1.0
