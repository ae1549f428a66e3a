"""Bad input to ``ltpa train``/``eval``/``attend``/``localise``/``diagnose``: one line
``ltpa CMD: error: ...`` that names the value or file, exit status 2, no traceback, and nothing
written or deleted (the folder trees are compared before and after), so that a corrected rerun
just works."""
import errno
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import ltpa._files
import ltpa.models
import ltpa.train.loop
import ltpa.train.state
from ltpa.cli import main
from ltpa.models.output import AttentionOutput
from ltpa.runs.config import TrainConfig
from ltpa.train.loop import TrainingDiverged, fit

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=64", "--set", "num_test=32",
        "--set", "batch_size=16", "--set", "num_classes=4", "--epochs", "1", "--no-progress"]
CKPT = "<checkpoint>"  # stands for the trained run's checkpoints/best.json


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 0
    return out


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------- setups


def _copy_run(work: Path, run: Path) -> None:
    shutil.copytree(run, work / "run")


def _break_file(name: str, text: str) -> Callable[[Path, Path], None]:
    def setup(work: Path, run: Path) -> None:
        _copy_run(work, run)
        (work / "run" / name).write_text(text)
    return setup


def _empty_folder(work: Path, run: Path) -> None:
    (work / "folder").mkdir()


def _text_file(work: Path, run: Path) -> None:
    (work / "notes.txt").write_text("not weights\n")


def _foreign_pt(work: Path, run: Path) -> None:
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, work / "evil.pt")


def _cut_safetensors(work: Path, run: Path) -> None:
    (work / "plain.safetensors").write_bytes((run / "checkpoints" / "best.safetensors").read_bytes()[:500])


def _cut_checkpoint(work: Path, run: Path) -> None:
    shutil.copytree(run / "checkpoints", work / "ckpt")
    weights = work / "ckpt" / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _edited_checkpoint(**changes) -> Callable[[Path, Path], None]:
    """A copy of the checkpoint whose stored config has ``changes`` (the sidecar is not hashed)."""
    def setup(work: Path, run: Path) -> None:
        shutil.copytree(run / "checkpoints", work / "ckpt")
        sidecar = work / "ckpt" / "best.json"
        content = json.loads(sidecar.read_text())
        content["config"].update(changes)
        sidecar.write_text(json.dumps(content))
    return setup


def _mask_folder(work: Path, run: Path) -> None:
    for sub, mode in (("images", "RGB"), ("masks", "L")):
        (work / "gt" / sub).mkdir(parents=True)
        Image.new(mode, (32, 32)).save(work / "gt" / sub / "a.png")


def _read_only_folder(work: Path, run: Path) -> None:
    (work / "locked").mkdir()
    os.chmod(work / "locked", 0o555)


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    message: str  # part of the one error line: the value or file it names, or the fix
    setup: Callable[[Path, Path], None] | None = None
    needs_non_root: bool = False  # permissions do not stop root


def _train(*args: str) -> list[str]:
    return ["train", "--out", "new", *TINY, *args]


CASES = [
    # values: float overflow, NaN, zero/negative, wrong type, unknown key with a near miss
    Case("lr overflow", _train("--set", "lr=1e300"), "lr=1e+300 is invalid"),
    Case("lr infinite", _train("--set", "lr=inf"), "lr='inf'"),
    Case("lr NaN", _train("--set", "lr=nan"), "lr='nan'"),
    Case("lr zero", _train("--set", "lr=0"), "lr=0.0 is invalid"),
    Case("lr negative", _train("--set", "lr=-0.1"), "lr=-0.1 is invalid"),
    Case("lr raised past float32 by gamma", _train("--set", "lr=1e30", "--set", "lr_gamma=1e10",
                                                   "--set", "lr_step_epochs=1", "--epochs", "3"),
         "learning rate would reach"),
    Case("momentum 1", _train("--set", "momentum=1"), "momentum=1.0 is invalid: expected a number in [0, 1)"),
    Case("epochs zero", _train("--epochs", "0"), "epochs=0 is invalid"),
    Case("epochs negative", _train("--epochs", "-2"), "epochs=-2 is invalid"),
    Case("batch zero", _train("--set", "batch_size=0"), "batch_size=0 is invalid"),
    Case("eval batch zero", _train("--set", "eval_batch_size=0"), "eval_batch_size=0 is invalid"),
    Case("threads negative", _train("--set", "cpu_threads=-1"), "cpu_threads=-1 is invalid"),
    Case("threads beyond any machine", _train("--set", "cpu_threads=100000"), "cpu_threads=100000 is invalid"),
    Case("NaN in a JSON list", _train("--set", "mean=[NaN,0.5,0.5]"), "mean='[NaN,0.5,0.5]'"),
    Case("NaN in model options", _train("--set", "model_options.width=NaN"), "NaN and Infinity are not allowed"),
    Case("wrong type", _train("--set", "epochs=three"), "epochs='three': expected int"),
    Case("unknown key, near miss", _train("--set", "epochz=3"), "Did you mean 'epochs'"),
    Case("unknown key", _train("--set", "learning_rate=0.1"), "unknown config key 'learning_rate'"),
    Case("stuck tolerance above ln K", _train("--set", "stuck_tolerance=10"), "stuck_tolerance=10.0 is invalid"),
    Case("data misspelt", _train("--data", "synthtic"), "Did you mean synthetic"),
    Case("device unknown", _train("--set", "device=tpu"), "device 'tpu'"),
    Case("crop padding beyond the image", _train("--set", "crop_padding=100000"), "crop_padding=100000 is invalid"),
    # checks that used to run after the run folder was written
    Case("train on a mask folder", _train("--data", "masks:gt"),
         "is a folder of images with ground-truth masks, for scoring attention with localise", _mask_folder),
    Case("batch larger than the data", _train("--set", "batch_size=100000"), "fewer than a batch of 100000"),
    Case("accumulation beyond the batch", _train("--set", "accumulate_steps=17"),
         "BatchNorm cannot train on: pass --set accumulate_steps=8 or less"),
    Case("last batch of one image", _train("--set", "drop_last=false", "--set", "batch_size=5"),
         "would hold a single image"),
    Case("freeze pattern", _train("--freeze", "trunkk"), "'trunkk' match no parameter"),
    Case("lr multiplier pattern", _train("--set", 'lr_multipliers={"trnk": 0.1}'), "'trnk' match no parameter"),
    Case("transfer pattern", _train("--init", CKPT, "--transfer", "trnk"), "'trnk' match no tensor"),
    Case("overwrite, then a bad freeze pattern", ["train", "--out", "run", *TINY, "--overwrite", "--freeze", "nope"],
         "'nope' match no parameter", _copy_run),
    Case("overwrite, then lr overflow", ["train", "--out", "run", *TINY, "--overwrite", "--set", "lr=1e300"],
         "lr=1e+300", _copy_run),
    # run folders and resume
    Case("resume a non-run", ["train", "--out", "folder", *TINY, "--resume"], "does not hold an ltpa run",
         _empty_folder),
    Case("resume, config.json not JSON", ["train", "--out", "run", *TINY, "--resume"],
         "config.json is not valid JSON", _break_file("config.json", "{not json")),
    Case("resume, environment.json not JSON", ["train", "--out", "run", *TINY, "--resume"],
         "environment.json is not the environment.json of an ltpa run",
         _break_file("environment.json", "{oops")),
    Case("resume, other config", ["train", "--out", "run", *TINY, "--resume", "--set", "lr=0.5"],
         "lr: run has 0.1, given 0.5", _copy_run),
    Case("out under a file", ["train", "--out", "notes.txt/run", *TINY], "notes.txt is a file", _text_file),
    Case("out under a read-only folder", ["train", "--out", "locked/run", *TINY], "locked is not writable",
         _read_only_folder, needs_non_root=True),
    # --init sources
    Case("init missing", _train("--init", "nofile.pt"), "no transfer source at nofile.pt"),
    Case("init a folder", _train("--init", "folder"), "folder is a directory without ltpa checkpoints",
         _empty_folder),
    Case("init a text file", _train("--init", "notes.txt"), "notes.txt is not a PyTorch file", _text_file),
    Case("init a cut safetensors", _train("--init", "plain.safetensors"),
         "plain.safetensors is not a readable safetensors file", _cut_safetensors),
    # analysis commands
    Case("diagnose limit negative", ["diagnose", CKPT, "--limit", "-5"], "argument --limit: expected an integer >= 1"),
    Case("diagnose limit zero", ["diagnose", CKPT, "--limit", "0"], "argument --limit: expected an integer >= 1, got 0"),
    Case("attend limit negative", ["attend", CKPT, "--data", "synthetic", "--limit", "-3", "--out", "maps"],
         "argument --limit"),
    Case("localise limit zero", ["localise", CKPT, "--limit", "0", "--out", "loc"], "argument --limit"),
    Case("attend a folder without checkpoints", ["attend", "folder", "--data", "synthetic", "--out", "maps"],
         "folder is a directory without ltpa checkpoints", _empty_folder),
    Case("train without --out", ["train", *TINY], "the following arguments are required: --out"),
    Case("localise, missing GAP checkpoint", ["localise", CKPT, "--limit", "4", "--out", "loc",
                                              "--gap-checkpoint", "nope.json"], "no checkpoint at nope.json"),
    # ltpa eval
    Case("eval a foreign .pt", ["eval", "evil.pt"], "ltpa train --init evil.pt", _foreign_pt),
    Case("eval a text file", ["eval", "notes.txt"], "notes.txt is not an ltpa checkpoint", _text_file),
    Case("eval a missing file", ["eval", "nope.json"], "no checkpoint at nope.json"),
    Case("eval a cut checkpoint", ["eval", "ckpt/best.json", "--out", "e.json"],
         "best.safetensors is corrupt", _cut_checkpoint),
    Case("eval --out a folder", ["eval", CKPT, "--out", "folder"], "folder is a folder", _empty_folder),
    Case("eval --out under a file", ["eval", CKPT, "--out", "notes.txt/e.json"], "notes.txt is a file", _text_file),
    Case("eval --out read-only", ["eval", CKPT, "--out", "locked/e.json"], "locked is not writable",
         _read_only_folder, needs_non_root=True),
    Case("eval batch zero", ["eval", CKPT, "--batch-size", "0", "--out", "e.json"], "argument --batch-size"),
    Case("eval on fewer classes", ["eval", CKPT, "--data", "synthetic:num_classes=3", "--out", "e.json"],
         "has 3 classes but the checkpoint's model predicts 4"),
    Case("eval, config from a newer ltpa", ["eval", "ckpt/best.json", "--out", "e.json"],
         "best.json does not fit this version of ltpa", _edited_checkpoint(future_option=1)),
    Case("eval an empty split", ["eval", "ckpt/best.json", "--split", "val", "--out", "e.json"],
         "the val split of 'synthetic' is empty", _edited_checkpoint(val_fraction=0.0)),
    Case("eval data misspelt", ["eval", CKPT, "--data", "cifar10O:/x", "--out", "e.json"], "Did you mean cifar10"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(case, run_dir, tmp_path, monkeypatch, capsys):
    if case.needs_non_root and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; run as another user to check this case")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if case.setup:
        case.setup(work, run_dir)
    argv = [str(run_dir / "checkpoints" / "best.json") if a == CKPT else a for a in case.argv]
    before = _tree(work), _tree(run_dir)
    try:
        status = main(["-q", *argv])
    except SystemExit as exit_:  # argparse
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"ltpa {argv[0]}: error: "), err
    assert case.message in lines[0]
    assert (_tree(work), _tree(run_dir)) == before, "files were written or deleted"


def test_a_corrected_rerun_just_works_and_overwrite_replaces_only_then(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _copy_run(tmp_path, run_dir)
    before = _tree(tmp_path / "run")
    assert main(["-q", "train", "--out", "run", *TINY, "--overwrite", "--set", "accumulate_steps=17"]) == 2
    assert _tree(tmp_path / "run") == before
    assert main(["-q", "train", "--out", "run", *TINY, "--overwrite", "--set", "accumulate_steps=8"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optimisation"]["accumulate_steps"] == 8


# ----------------------------------------------------------------------------- disk full


class _FullDisk:
    """Stands in for ``os`` in ltpa._files: once ``full`` is set, writing a file fails as on a
    full disk (ENOSPC from write(), which names no file)."""

    def __init__(self):
        self.full = False

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, *args, **kwargs):
        handle = os.fdopen(fd, *args, **kwargs)
        if self.full:
            def write(_data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = write
        return handle


def test_a_full_disk_before_the_runs_records_says_start_again_and_that_works(tmp_path, monkeypatch, capsys):
    disk = _FullDisk()
    disk.full = True  # nothing of the run could be written: not even config.json
    monkeypatch.setattr(ltpa._files, "os", disk)
    out = tmp_path / "run dir"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ": the disk is full" in err and "Traceback" not in err
    assert err.endswith(f"start the run again: ltpa train ... --out '{out}' --overwrite")
    monkeypatch.undo()
    assert main(["-q", "train", "--out", str(out), *TINY, "--overwrite"]) == 0


def test_a_full_disk_names_the_file_and_how_to_resume(tmp_path, monkeypatch, capsys):
    disk = _FullDisk()
    monkeypatch.setattr(ltpa._files, "os", disk)
    real_append = ltpa.train.state.append_jsonl  # the train state appends metrics.jsonl

    def append_then_fill(path, record):  # the disk fills up during epoch 2's writes
        real_append(path, record)
        disk.full = record["epoch"] == 2

    monkeypatch.setattr(ltpa.train.state, "append_jsonl", append_then_fill)
    out = tmp_path / "run"
    assert main(["-q", "train", "--out", str(out), *TINY, "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "[Errno" not in err
    assert f"cannot write {out / 'checkpoints' / 'epoch_0002.safetensors'}: the disk is full" in err
    assert f"continue the run from the last complete checkpoint (epoch_0001): ltpa train --out {out} --resume" in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["-q", "train", "--out", str(out), *TINY, "--epochs", "3", "--resume"]) == 0
    assert json.loads((out / "final_metrics.json").read_text())["epochs_completed"] == 3


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_a_file_size_limit_stops_the_run_with_one_line(tmp_path):
    """A real failed write: the kernel refuses to grow a file past RLIMIT_FSIZE (EFBIG)."""
    out = tmp_path / "run"

    def limit():  # the config files fit, the first checkpoint (~700 kB) does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    done = subprocess.run([sys.executable, "-m", "ltpa", "-q", "train", "--out", str(out), *TINY],
                          preexec_fn=limit, capture_output=True, text=True, timeout=600)
    err = done.stderr.strip()
    assert done.returncode == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert f"cannot write {out / 'checkpoints' / 'epoch_0001.safetensors'}: the file would exceed" in err
    assert "from epoch 1 (no checkpoint was completed)" in err and err.endswith(f"ltpa train --out {out} --resume")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # the fix it names works: with room again, the same run continues to its end
    assert main(["-q", "train", "--out", str(out), *TINY, "--resume"]) == 0
    assert (out / "final_metrics.json").is_file()


# ----------------------------------------------------------------------------- quiet mistakes


class _NaNModel(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.linear = nn.Linear(3, num_classes)

    def forward(self, images):
        logits = self.linear(images.mean(dim=(2, 3))) * float("nan")
        return AttentionOutput(logits=logits, maps=(), scores=None, levels=(), features=logits,
                               normalisation="none")


def test_the_divergence_hint_names_an_unusual_momentum_before_the_lr(tmp_path, monkeypatch):
    monkeypatch.setattr(ltpa.models, "create_model", lambda name, num_classes, **kw: _NaNModel(num_classes))
    config = TrainConfig(num_train=64, num_test=16, batch_size=16, num_classes=4, epochs=1, momentum=0.999,
                         weight_decay=0.1, tensorboard=False)
    with pytest.raises(TrainingDiverged) as err:
        fit(config, tmp_path / "run", progress=False)
    message = str(err.value)
    assert "Unusual settings that can cause this: momentum=0.999" in message
    assert "weight_decay=0.1" in message
    assert message.index("momentum=0.999") < message.index("lower the learning rate")


def test_eval_warns_when_the_data_has_other_class_names(run_dir, tmp_path, caplog):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("ant", "bee", "cat", "dog"):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "eval.json"
    assert main(["-q", "eval", str(run_dir / "checkpoints" / "best.json"), "--data",
                 f"folder:{tmp_path / 'images'}", "--out", str(out)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "trained on" in r.getMessage()]
    trained = json.loads((run_dir / "classes.json").read_text())
    assert len(warnings) == 1 and f"{trained[0]!r} vs 'ant'" in warnings[0] and "4 of 4 names differ" in warnings[0]
    assert json.loads(out.read_text())["warnings"] == warnings


def test_resume_drops_a_metrics_line_cut_short_by_a_full_disk(run_dir, tmp_path, caplog):
    _copy_run(tmp_path, run_dir)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 2, "step": 6, "lr": 0.')  # epoch 2 never saved
    assert main(["-q", "train", "--out", str(tmp_path / "run"), *TINY, "--epochs", "2", "--resume"]) == 0
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert any("cut short" in r.getMessage() for r in caplog.records)
