"""Nothing a user has is ever lost: the manifest, the one output-folder policy and the writer's lock,
unit by unit and through the analysis commands on a tiny trained run."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ltpa.cli import main
from ltpa.runs.config import TrainConfig
from ltpa.runs.run import Run
from ltpa.runs.ownership import (MANIFEST_FILE, FolderBusy, OutputFolder, check_output_file,
                                 is_training_run, json_report_recogniser, lock_folder, read_manifest)

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=64", "--set", "num_test=32",
        "--set", "batch_size=16", "--set", "num_classes=4", "--epochs", "1", "--no-progress"]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256), to prove nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "figures").mkdir()
    (path / "figures" / "fig1.pdf").write_bytes(b"%PDF figure")
    (path / "predictions.json").write_text('{"mine": true}')  # the name attend writes, but not ltpa's
    return path


# ---------------------------------------------------------------- OutputFolder


def test_a_folder_ltpa_did_not_write_is_never_emptied(tmp_path):
    out = _users_folder(tmp_path / "mine")
    before = _snapshot(out)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not written by ltpa") as info:
            OutputFolder(out, "attend", overwrite=overwrite).check()
        assert "new or empty folder" in str(info.value)
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == [
        "figures", "predictions.json", "thesis.tex"]


def test_overwrite_replaces_only_the_files_the_manifest_lists_after_the_new_ones_are_written(tmp_path):
    out = tmp_path / "maps"
    with OutputFolder(out, "attend").check() as folder:
        folder.write_bytes("a.png", b"old a")
        folder.write_bytes("b.png", b"old b")
    assert read_manifest(out).files == ("a.png", "b.png") and read_manifest(out).kind == "attend"
    (out / "notes.txt").write_text("added by the user since")
    with pytest.raises(ValueError, match="pass overwrite=True"):
        OutputFolder(out, "attend").check()
    folder = OutputFolder(out, "attend", overwrite=True).check()
    with folder:
        folder.write_bytes("a.png", b"new a")
        assert (out / "b.png").read_bytes() == b"old b"  # the earlier files go only at the end
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, "a.png", "notes.txt"]
    assert (out / "a.png").read_bytes() == b"new a" and (out / "notes.txt").read_text() == "added by the user since"
    assert read_manifest(out).files == ("a.png",) and read_manifest(out).complete


def test_a_writer_that_fails_part_way_removes_nothing_earlier(tmp_path):
    out = tmp_path / "maps"
    with OutputFolder(out, "attend") as folder:
        folder.write_bytes("a.png", b"old a")
        folder.write_bytes("b.png", b"old b")
    with pytest.raises(RuntimeError, match="boom"):
        with OutputFolder(out, "attend", overwrite=True).check() as folder:
            folder.write_bytes("c.png", b"new c")
            raise RuntimeError("boom")
    assert {p.name for p in out.iterdir()} == {MANIFEST_FILE, "a.png", "b.png", "c.png"}
    manifest = read_manifest(out)
    assert set(manifest.files) == {"a.png", "b.png", "c.png"} and not manifest.complete
    lock_folder(out).release()  # the failed writer released its lock


def test_training_runs_and_other_commands_outputs_are_refused(tmp_path):
    legacy = tmp_path / "legacy_run"  # a run written before manifests existed
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.json").write_text("{}")
    with Run.create(TrainConfig(), tmp_path / "run", "new"):
        (tmp_path / "run" / "config.json").write_text("{}")
    assert is_training_run(legacy) and is_training_run(tmp_path / "run")
    for run in (legacy, tmp_path / "run"):
        before = _snapshot(run)
        with pytest.raises(ValueError, match="is a training run"):
            OutputFolder(run, "localise", overwrite=True).check()
        assert _snapshot(run) == before
    with OutputFolder(tmp_path / "maps", "attend") as folder:
        folder.write_bytes("a.png", b"a")
    with pytest.raises(ValueError, match="output of `ltpa attend`"):
        OutputFolder(tmp_path / "maps", "localise", overwrite=True).check()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        OutputFolder(tmp_path / "file", "attend").check()


def test_manifest_names_never_leave_the_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("mine")
    out = tmp_path / "maps"
    with OutputFolder(out, "attend") as folder:
        with pytest.raises(ValueError, match="not a file name inside"):
            folder.record("../precious.txt")
        folder.write_bytes("a.png", b"a")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["files"] += ["../precious.txt", str(outside)]  # hand-edited
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    with OutputFolder(out, "attend", overwrite=True).check() as folder:
        folder.write_bytes("b.png", b"b")
    assert outside.read_text() == "mine"


# ---------------------------------------------------------------- the lock

_HOLDER = textwrap.dedent("""
    import sys
    from ltpa.runs.ownership import OutputFolder
    folder = OutputFolder(sys.argv[1], "attend", command="ltpa attend first").check()
    with folder:
        folder.write_bytes("first.txt", b"part one")
        print("ready", flush=True)
        sys.stdin.readline()
        folder.write_bytes("first.txt", b"part one, part two")
    print("done", flush=True)
""")


def test_a_second_writer_fails_at_once_naming_the_holder_and_the_first_is_unharmed(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ready"
        start = time.monotonic()
        with pytest.raises(FolderBusy) as info:
            OutputFolder(out, "attend", overwrite=True).check().prepare()
        assert time.monotonic() - start < 2.0  # at once, no waiting
        message = str(info.value)
        assert f"pid {first.pid}" in message and "ltpa attend first" in message and "since" in message
        with pytest.raises(FolderBusy):
            lock_folder(out, "ltpa train")  # any other writer of the folder too
        first.stdin.write("go\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "done"
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert (out / "first.txt").read_bytes() == b"part one, part two"
    assert read_manifest(out).files == ("first.txt",) and read_manifest(out).complete
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, "first.txt"]  # lock file removed
    with OutputFolder(out, "attend", overwrite=True).check() as folder:  # free again
        folder.write_bytes("second.txt", b"2")


def test_a_killed_holder_never_leaves_the_folder_locked(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    with pytest.raises(FolderBusy):
        lock_folder(out)
    holder.kill()
    holder.wait(timeout=60)
    lock_folder(out, "after").release()


# ---------------------------------------------------------------- single files (eval --out, report)


def test_a_single_output_file_is_replaced_only_if_ltpa_wrote_it_and_overwrite_allows(tmp_path):
    recognise = json_report_recogniser("checkpoint", "split")
    essay = tmp_path / "essay.txt"
    essay.write_text("my essay")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not written by ltpa"):
            check_output_file(essay, overwrite=overwrite, recognise=recognise, what="eval report")
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"checkpoint": "c", "split": "test"}))
    with pytest.raises(ValueError, match="pass overwrite=True"):
        check_output_file(report, overwrite=False, recognise=recognise, what="eval report")
    assert check_output_file(report, overwrite=True, recognise=recognise, what="eval report") == report
    assert check_output_file(tmp_path / "new.json", overwrite=False, recognise=recognise, what="x")
    assert essay.read_text() == "my essay"


# ---------------------------------------------------------------- the commands, as a user runs them


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ownership") / "run"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 0
    return out


def test_attend_overwrite_in_a_users_folder_keeps_every_user_file(run_dir, tmp_path, capsys):
    out = _users_folder(tmp_path / "U")
    before = _snapshot(out)
    best = str(run_dir / "checkpoints" / "best.json")
    assert main(["attend", best, "--data", "synthetic", "--limit", "2", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltpa attend: error:") and "not written by ltpa" in err and "Traceback" not in err
    assert _snapshot(out) == before
    # a folder attend wrote itself: replaced, and a file the user added since stays
    maps = tmp_path / "maps"
    assert main(["attend", best, "--data", "synthetic", "--limit", "2", "--out", str(maps)]) == 0
    (maps / "thesis.tex").write_text("mine")
    assert main(["attend", best, "--data", "synthetic", "--limit", "2", "--out", str(maps)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err  # the CLI renders the remedy as its flag
    assert main(["attend", best, "--data", "synthetic", "--limit", "1", "--out", str(maps), "--overwrite"]) == 0
    assert (maps / "thesis.tex").read_text() == "mine"
    assert not (maps / "image_00001.png").exists() and (maps / "image_00000.png").exists()


def test_localise_refuses_a_training_run_as_its_output_and_leaves_it_intact(run_dir, capsys):
    before = _snapshot(run_dir)
    for extra in ([], ["--overwrite"]):
        assert main(["localise", str(run_dir / "checkpoints" / "best.json"), "--limit", "4", "--out", str(run_dir),
                     "--no-road", "--faithfulness-images", "0", *extra]) == 2
        err = capsys.readouterr().err
        assert "is a training run" in err and "Traceback" not in err
    assert _snapshot(run_dir) == before


def test_a_failing_localise_overwrite_leaves_the_previous_report_intact(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    argv = ["localise", str(run_dir / "checkpoints" / "best.json"), "--limit", "4", "--out", str(out), "--no-road",
            "--faithfulness-images", "0", "--methods", "attention", "centre"]
    assert main(argv) == 0
    before = _snapshot(out)
    with pytest.raises(SystemExit) as refused:  # refused by the parser, before anything
        main([*argv, "--overwrite", "--steps", "0"])
    assert refused.value.code == 2
    assert _snapshot(out) == before

    import ltpa.attention.report as report

    def failing(*args, **kwargs):
        raise ValueError("steps: no such setting for this data")
    monkeypatch.setattr(report, "localise_trained", failing)  # a check that fails after the folder check
    assert main([*argv, "--overwrite", "--steps", "8"]) == 2
    assert "steps" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_eval_out_never_replaces_a_users_file(run_dir, tmp_path, capsys):
    best = str(run_dir / "checkpoints" / "best.json")
    essay = tmp_path / "essay.txt"
    essay.write_text("my essay")
    for extra in ([], ["--overwrite"]):
        assert main(["eval", best, "--out", str(essay), *extra]) == 2
        err = capsys.readouterr().err
        assert "not written by ltpa" in err and "Traceback" not in err
    assert essay.read_text() == "my essay"
    report = tmp_path / "eval.json"
    assert main(["eval", best, "--out", str(report)]) == 0
    first = report.read_bytes()
    assert main(["eval", best, "--out", str(report), "--split", "train"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and report.read_bytes() == first
    assert main(["eval", best, "--out", str(report), "--split", "train", "--overwrite"]) == 0
    assert json.loads(report.read_text())["split"] == "train"


def test_output_files_keep_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with OutputFolder(tmp_path / "out", "attend") as folder:
            path = folder.write_bytes("a.txt", b"a")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
