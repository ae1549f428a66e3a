"""The checkpoint store commits each save once (state.json): no kill at any point of a save and
no full disk leaves "latest" and "best" inconsistent, and resume repairs what a save left."""
import errno
import json
import os
import signal

import pytest
import torch
from torch import nn

from ltpa.runs.checkpoints import COMMIT_FILE, CheckpointStore, load_checkpoint

VALS = {1: 10.0, 2: 20.0, 3: 15.0}  # the scripted validation top-1 per epoch


def _model(epoch: int) -> nn.Module:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(epoch))  # the weights say which epoch they are from
    return model


def _save(store: CheckpointStore, epoch: int, keep_last: int = 2) -> None:
    store.save(f"epoch_{epoch:04d}", best_metric=VALS[epoch], keep_last=keep_last,
               model=_model(epoch), config={}, epoch=epoch, step=10 * epoch,
               metrics={"val_acc1": VALS[epoch]}, rng=False)


def _metrics(up_to: int) -> list[dict]:
    return [{"epoch": e, "val_acc1": VALS[e]} for e in range(1, up_to + 1)]


def _weights_epoch(path) -> float:
    return load_checkpoint(path).model_state["weight"][0, 0].item()


def _check_consistent(folder, latest_candidates):
    """After repair: latest is a committed epoch, best.* hold the true best's weights."""
    store = CheckpointStore(folder)
    record = store.record()
    latest = load_checkpoint(store.latest())
    assert latest.epoch in latest_candidates
    true_best = max(range(1, latest.epoch + 1), key=lambda e: (VALS[e], -e))
    assert record["best"]["epoch"] == true_best
    assert load_checkpoint(store.best()).epoch == true_best
    assert _weights_epoch(folder / "best.json") == true_best
    for name in record["kept"]:
        assert load_checkpoint(folder / name).epoch == int(name[-4:])
    on_disk = sorted(p.stem for p in folder.glob("epoch_*.json"))
    assert on_disk == sorted(n for n in record["kept"] if n.startswith("epoch_"))


_POINTS = ("replace", "link", "unlink", "fsync")


def _count_points(tmp_path, epoch) -> int:
    """How many file-system steps one save of ``epoch`` makes (each is a kill point)."""
    folder = tmp_path / "count"
    store = CheckpointStore(folder)
    for e in range(1, epoch):
        _save(store, e)
    calls = []
    real = {name: getattr(os, name) for name in _POINTS}

    def counting(name):
        def call(*args, **kwargs):
            calls.append(name)
            return real[name](*args, **kwargs)
        return call

    for name in _POINTS:
        setattr(os, name, counting(name))
    try:
        _save(store, epoch)
    finally:
        for name in _POINTS:
            setattr(os, name, real[name])
    return len(calls)


def _save_killed_at(folder, epoch, point) -> int:
    """Save ``epoch`` in a forked child that SIGKILLs itself at file-system step ``point``."""
    pid = os.fork()
    if pid == 0:  # child: no cleanup, no finally blocks, as with a real kill
        count = [0]
        real = {name: getattr(os, name) for name in _POINTS}

        def dying(name):
            def call(*args, **kwargs):
                count[0] += 1
                if count[0] == point:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real[name](*args, **kwargs)
            return call

        for name in _POINTS:
            setattr(os, name, dying(name))
        try:
            _save(CheckpointStore(folder), epoch)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("epoch", [2, 3])  # the save that becomes best, the one that does not
def test_a_kill_at_any_point_of_a_save_leaves_latest_and_best_consistent(tmp_path, epoch):
    points = _count_points(tmp_path, epoch)
    assert points >= 8  # pair, record, best links, prune: a kill point each
    for point in range(1, points + 1):
        folder = tmp_path / f"kill{point}"
        store = CheckpointStore(folder)
        for e in range(1, epoch):
            _save(store, e)
        status = _save_killed_at(folder, epoch, point)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, point
        CheckpointStore(folder).repair(_metrics(epoch))  # metrics.jsonl is appended first
        _check_consistent(folder, {epoch - 1, epoch})


@pytest.mark.parametrize("epoch", [2, 3])
def test_a_full_disk_at_any_point_of_a_save_leaves_latest_and_best_consistent(tmp_path, epoch):
    points = _count_points(tmp_path, epoch)
    for point in range(1, points + 1):
        folder = tmp_path / f"full{point}"
        store = CheckpointStore(folder)
        for e in range(1, epoch):
            _save(store, e)
        count = [0]
        real = {name: getattr(os, name) for name in _POINTS}

        def failing(name):
            def call(*args, **kwargs):
                count[0] += 1
                if count[0] == point:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real[name](*args, **kwargs)
            return call

        for name in _POINTS:
            setattr(os, name, failing(name))
        try:
            _save(store, epoch)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            for name in _POINTS:
                setattr(os, name, real[name])
        CheckpointStore(folder).repair(_metrics(epoch))
        _check_consistent(folder, {epoch - 1, epoch})


def test_best_is_a_pointer_that_prune_never_removes(tmp_path):
    store = CheckpointStore(tmp_path)
    for epoch in (1, 2, 3):
        _save(store, epoch, keep_last=1)
    record = json.loads((tmp_path / COMMIT_FILE).read_text())
    assert record["latest"] == "epoch_0003" and record["kept"] == ["epoch_0002", "epoch_0003"]
    assert record["best"] == {"name": "epoch_0002", "epoch": 2, "val_acc1": 20.0}
    assert os.path.samefile(tmp_path / "best.safetensors", tmp_path / "epoch_0002.safetensors")
    assert _weights_epoch(tmp_path / "best") == 2


def test_an_old_run_with_a_wrong_best_is_repaired_from_the_metrics(tmp_path, caplog):
    """Before the record existed, a kill between the epoch_0002 save and the best save left
    best = epoch 1 while metrics.jsonl says epoch 2 (val 10/20)."""
    store = CheckpointStore(tmp_path)
    for epoch in (1, 2):
        _save(store, epoch)
    for ext in ("json", "safetensors"):  # what the old trainer left: best from epoch 1
        (tmp_path / f"best.{ext}").unlink()
        (tmp_path / f"best.{ext}").write_bytes((tmp_path / f"epoch_0001.{ext}").read_bytes())
    (tmp_path / COMMIT_FILE).unlink()
    done = store.repair(_metrics(2))
    assert any("corrected from epoch_0001 to epoch_0002" in line for line in done), done
    assert _weights_epoch(tmp_path / "best") == 2
    assert store.record()["best"]["epoch"] == 2
    assert store.repair(_metrics(2)) == []  # nothing left to do


def test_an_uncommitted_pair_is_not_the_latest_and_is_removed(tmp_path):
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    record = (tmp_path / COMMIT_FILE).read_bytes()
    _save(store, 2)
    (tmp_path / COMMIT_FILE).write_bytes(record)  # as if killed just before the commit
    assert store.latest() == tmp_path / "epoch_0001.json"
    done = store.repair(_metrics(2))
    assert any("epoch_0002" in line and "committed" in line for line in done), done
    assert not (tmp_path / "epoch_0002.json").exists()
    _check_consistent(tmp_path, {1})
