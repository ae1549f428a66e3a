"""``ltpa robustness`` and ``ltpa probe`` through the command line, on one tiny run."""
import json

import pytest

from ltpa.cli import main
from ltpa.robustness import run_robustness
from ltpa.transfer.probe import run_probe

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=64", "--set", "num_test=24",
        "--set", "batch_size=16", "--set", "num_classes=4", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments") / "run"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 0
    return out / "checkpoints" / "best.json"


def test_robustness_command_prints_and_saves_the_library_result(checkpoint, tmp_path, capsys):
    out = tmp_path / "rob"
    argv = ["robustness", str(checkpoint), "--attack", "fgsm", "--eps", "2/255,8/255", "--limit", "12",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "robustness.json").read_text())
    assert (out / "robustness.png").stat().st_size > 0
    # the same call through the library gives the same accuracies: the CLI only passes arguments on
    expected = run_robustness([checkpoint], tmp_path / "lib", attack="fgsm", eps="2/255,8/255", limit=12)
    assert saved["curves"][0]["correct"] == expected.to_dict()["curves"][0]["correct"]
    assert saved["eps"] == pytest.approx([0.0, 2 / 255, 8 / 255])
    accuracies = [f"{100 * a:.1f}" for a in saved["curves"][0]["accuracy"]]
    table_row = next(line for line in printed.splitlines() if accuracies[0] in line)
    assert all(a in table_row for a in accuracies)


def test_robustness_command_refuses_a_non_empty_folder_it_did_not_write(checkpoint, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["robustness", str(checkpoint), "--limit", "4", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltpa robustness: error:") and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_probe_command_prints_the_library_summary(checkpoint, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["probe", str(checkpoint), "--data", "synthetic,num_train=40,num_test=20,num_classes=4",
            "--no-cache", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "probe.json").read_text())
    expected = run_probe(checkpoint, "synthetic,num_train=40,num_test=20,num_classes=4", None, cache_dir=None)
    assert saved["test_correct"] == expected.to_dict()["test_correct"]
    assert saved["num_test"] == 20 and saved["features"] == "attention"
    assert f"{100 * saved['test_accuracy']:.1f}" in printed
