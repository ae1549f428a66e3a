"""CIFAR-100 sample -> CUB sample fine-tune and CUB localisation, end to end through the CLI."""
import json
from pathlib import Path

import pytest

from ltpa.cli import main

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CIFAR = DATA / "cifar100-mini"
CUB = DATA / "cub200-mini" / "CUB_200_2011"

pytestmark = pytest.mark.integration

TINY = ["--set", "model_options.width=0.0625", "--set", "model_options.dropout=false", "--epochs", "1",
        "--set", "batch_size=32", "--no-progress", "--set", "tensorboard=false"]


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    for path in (CIFAR, CUB):
        if not path.exists():
            pytest.skip(f"real data sample {path} is absent (only CI has ../shared/data beside the repository)")
    out = tmp_path_factory.mktemp("c100") / "run"
    assert main(["-q", "train", "--preset", "cifar100-vgg-att2", "--data", f"cifar100:{CIFAR}", *TINY,
                 "--set", "subset_train=500", "--set", "subset_test=100", "--out", str(out)]) == 0
    return out


def test_cub_fine_tune_from_cifar_loads_all_but_the_classifier(cifar_run, tmp_path):
    out = tmp_path / "cub"
    assert main(["-q", "train", "--preset", "cub-vgg-att2", "--data", f"cub:{CUB}", "--set", "num_classes=10",
                 *TINY, "--init", str(cifar_run), "--out", str(out)]) == 0
    report = json.loads((out / "transfer_report.json").read_text())
    assert report["counts"]["shape_mismatch"] == 0 and report["counts"]["loaded"] > 100
    skipped = [e["name"] for e in report["entries"] if e["status"] == "skipped"]
    assert skipped and all(name.startswith("head.classifier") for name in skipped)
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["test"]["samples"] == 243

    loc = tmp_path / "loc"
    assert main(["-q", "localise", str(out / "checkpoints" / "epoch_0001.json"), "--data", f"cub:{CUB}",
                 "--limit", "16", "--faithfulness-images", "0", "--methods", "attention", "centre",
                 "--out", str(loc)]) == 0
    result = json.loads((loc / "localisation.json").read_text())
    assert len(result["parts"]["parts"]) == 16  # 15 CUB parts + "none"
    assert {"attention/conv10", "attention/conv13", "centre"} <= set(result["parts"]["levels"])
