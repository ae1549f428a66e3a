"""scripts/ablation.py --tiny runs end to end: every model and seed trained twice (classification
data, synthetic data), the table's mean ± std equal to the runs' own numbers."""
import importlib.util
import json
import statistics
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation.py"


def _load():
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_ablation_writes_a_table_of_mean_and_std_over_seeds(tmp_path, capsys):
    out = tmp_path / "ablation"
    # synthetic data stands in for CIFAR-100 (no files needed): 4 classes, 32 px
    result = _load().main(["--tiny", "--out", str(out), "--models", "vgg", "vgg_att2", "--seeds", "2",
                           "--data", "synthetic:num_classes=4,num_train=64,num_test=32", "--num-classes", "4"])
    printed = capsys.readouterr().out
    runs = result["runs"]
    assert [(r["model"], r["seed"]) for r in runs] == [("vgg", 0), ("vgg_att2", 0), ("vgg", 1), ("vgg_att2", 1)]
    for name in ("vgg_s0_cls", "vgg_att2_s1_synthetic"):
        assert (out / name / "final_metrics.json").is_file()
    final = json.loads((out / "vgg_att2_s1_cls" / "final_metrics.json").read_text())
    assert runs[3]["test_acc1"] == pytest.approx(final["test"]["acc1"])
    assert runs[0]["pointing_attention"] is None and runs[1]["best_level"] in ("conv10", "conv13")
    assert runs[1]["pointing_attention"] == max(runs[1]["pointing_levels"].values())
    written = json.loads((out / "ablation.json").read_text())
    assert written["summary"] == result["summary"] and written["meta"]["tiny"] is True
    for model in ("vgg", "vgg_att2"):
        accuracy = [r["test_acc1"] for r in runs if r["model"] == model]
        stats = result["summary"][model]["test_acc1"]
        assert stats["mean"] == pytest.approx(statistics.fmean(accuracy))
        assert stats["std"] == pytest.approx(statistics.stdev(accuracy)) and stats["n"] == 2
    assert result["summary"]["vgg"]["pointing_attention"]["mean"] is None
    table = (out / "ablation.md").read_text()
    mean, std = result["summary"]["vgg_att2"]["test_acc1"]["mean"], result["summary"]["vgg_att2"]["test_acc1"]["std"]
    row = next(line for line in table.splitlines() if line.startswith("| vgg_att2 |"))
    assert f"{mean:.1f} ± {std:.1f}" in row and table in printed
    assert next(line for line in table.splitlines() if line.startswith("| vgg |")).split("|")[4].strip() == "-"
