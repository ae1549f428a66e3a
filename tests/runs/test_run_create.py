"""Run.create: the one way a writer takes a run folder. Checks first, then the lock, then (and
only then) a replaced run's own files go; a user's files and analysis outputs are never used."""
import json
import shutil

import pytest

from ltpa.errors import UserError
from ltpa.runs.layout import check_run_folder, is_run
from ltpa.runs.ownership import MANIFEST_FILE, FolderBusy, OutputFolder, lock_folder, read_manifest
from ltpa.runs.run import Run
from ltpa.train import TrainConfig

CONFIG = TrainConfig()


def _fake_run(folder, extra=()):
    """A run folder as the trainer leaves it, plus a user's own files."""
    with Run.create(CONFIG, folder, "new") as run:
        (folder / "config.json").write_text("{}")
        (folder / "environment.json").write_text(json.dumps({"format": "ltpa-run"}))
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "epoch_0001.json").write_text("{}")
        for name in extra:
            (folder / name).write_text("mine")
    return run


def test_new_run_is_marked_locked_while_open_and_records_its_files(tmp_path):
    out = tmp_path / "run"
    run = Run.create(CONFIG, out, "new", command="ltpa train")
    assert run.action == "new" and read_manifest(out).kind == "run" and is_run(out)
    with pytest.raises(FolderBusy, match="ltpa train"):  # a second writer fails at once, naming the first
        Run.create(CONFIG, out, "overwrite")
    (out / "config.json").write_text("{}")
    (out / "environment.json").write_text(json.dumps({"format": "ltpa-run"}))
    run.close()
    assert read_manifest(out).files == ("config.json", "environment.json")
    Run.create(CONFIG, out, "resume").close()  # the lock was released


def test_new_refuses_a_run_and_a_users_folder_without_changing_them(tmp_path):
    _fake_run(tmp_path / "run")
    with pytest.raises(UserError, match="already holds an ltpa run"):
        Run.create(CONFIG, tmp_path / "run", "new")
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("chapter 1")
    with pytest.raises(UserError, match="is not empty"):
        Run.create(CONFIG, user, "new")
    assert sorted(p.name for p in user.iterdir()) == ["thesis.tex"]  # no manifest, no lock left


def test_overwrite_removes_only_the_runs_own_files(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, extra=("notes.txt",))
    run = Run.create(CONFIG, out, "overwrite")
    assert run.action == "overwrite"
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()
    assert (out / "notes.txt").read_text() == "mine"
    run.close()


def test_overwrite_beside_foreign_files_keeps_them_and_says_so(tmp_path):
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "thesis.tex").write_text("chapter 1")
    with Run.create(CONFIG, out, "overwrite") as run:
        assert run.action == "beside"
    assert (out / "thesis.tex").read_text() == "chapter 1"


def test_an_analysis_output_is_never_a_run_folder(tmp_path):
    out = tmp_path / "attend"
    with OutputFolder(out, "attend").check() as folder:
        folder.write_json("predictions.json", {"a": 1})
    for mode in ("new", "overwrite", "resume"):
        with pytest.raises(UserError, match="ltpa attend"):
            Run.create(CONFIG, out, mode)
    assert json.loads((out / "predictions.json").read_text()) == {"a": 1}
    assert read_manifest(out).kind == "attend"


def test_resume_needs_a_run_and_removes_interrupted_temporaries(tmp_path):
    with pytest.raises(ValueError, match="does not hold an ltpa run"):
        Run.create(CONFIG, tmp_path / "nothing", "resume")
    out = tmp_path / "run"
    _fake_run(out)
    (out / "checkpoints" / ".epoch_0002.json.abc.tmp").write_text("half")
    with Run.create(CONFIG, out, "resume") as run:
        assert run.action == "resume" and [p.name for p in run.stale_temporaries] == [".epoch_0002.json.abc.tmp"]


def test_a_run_killed_right_after_its_manifest_starts_again(tmp_path):
    out = tmp_path / "run"
    Run.create(CONFIG, out, "new").close()  # killed before writing anything: only the manifest
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE]
    assert is_run(out)  # protected from analysis outputs...
    assert check_run_folder(out, resume=False, overwrite=False) == "new"  # ...and nothing to lose: start again
    with pytest.raises(ValueError, match="does not hold an ltpa run"):  # nor anything to resume
        check_run_folder(out, resume=True, overwrite=False)


def test_overwrite_needs_the_trainers_own_records_not_look_alike_files(tmp_path):
    other = tmp_path / "other_tool"  # another tool's run: config.json + train.log look like ltpa's
    other.mkdir()
    for name in ("config.json", "train.log", "notes.txt"):
        (other / name).write_text("theirs")
    emptied = tmp_path / "emptied"  # an ltpa run the user emptied with rm -r run/*: the manifest stayed
    _fake_run(emptied)
    for path in emptied.iterdir():
        if not path.name.startswith("."):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in ("config.json", "summary.txt", "report.html"):
        (emptied / name).write_text("mine")
    for folder in (other, emptied):
        before = {p.name: p.read_text() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
        with pytest.raises(ValueError, match="refusing to delete them"):
            Run.create(CONFIG, folder, "overwrite")
        with pytest.raises(ValueError, match="does not hold an ltpa run"):
            Run.create(CONFIG, folder, "resume")
        assert {p.name: p.read_text() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} == before
    assert read_manifest(other) is None  # a refused folder is not marked as a run


def test_a_users_files_in_the_runs_own_folders_are_never_listed_or_removed(tmp_path):
    out = tmp_path / "run"
    with Run.create(CONFIG, out, "new"):
        (out / "environment.json").write_text(json.dumps({"format": "ltpa-run"}))
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "epoch_0001.json").write_text("{}")
        (out / "checkpoints" / "my_keep.safetensors").write_text("mine")  # the user's copy
        (out / "tb").mkdir()
        (out / "tb" / "notes.md").write_text("mine")
    assert read_manifest(out).files == ("checkpoints/epoch_0001.json", "environment.json")
    Run.create(CONFIG, out, "overwrite").close()
    assert (out / "checkpoints" / "my_keep.safetensors").read_text() == "mine"
    assert (out / "tb" / "notes.md").read_text() == "mine"
    assert not (out / "checkpoints" / "epoch_0001.json").exists()
    assert read_manifest(out).files == ()  # what is on disk now, not what once was


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode="):
        Run.create(CONFIG, tmp_path / "x", "append")
    with lock_folder(tmp_path / "y"):
        pass
