import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ltpa.train import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                        load_model_state, prune_checkpoints, save_checkpoint)


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _trained(optimizer_cls=torch.optim.SGD, steps: int = 3):
    model = _tiny_model()
    if optimizer_cls is torch.optim.SGD:
        optimizer = optimizer_cls(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = optimizer_cls(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    for _ in range(steps):
        images = torch.randn(4, 3, 8, 8)
        loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    return model, optimizer, scheduler, scaler


def _assert_same(a, b, where="state"):
    if not (isinstance(a, dict) and isinstance(b, dict)):  # OrderedDict == dict is fine
        assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _save(directory, name="epoch_0001", model=None, **kwargs):
    model = model or _tiny_model()
    kwargs.setdefault("config", {"model": "tiny", "lr": 0.1})
    return save_checkpoint(directory, name, model=model, epoch=kwargs.pop("epoch", 1),
                           step=kwargs.pop("step", 10), metrics={"val_acc1": 50.0}, **kwargs)


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.Adam])
def test_round_trip_is_bit_exact(tmp_path, optimizer_cls):
    model, optimizer, scheduler, scaler = _trained(optimizer_cls)
    save_checkpoint(tmp_path, "epoch_0003", model=model, optimizer=optimizer, scheduler=scheduler,
                    scaler=scaler, config={"model": "tiny", "lr": 0.1}, epoch=3, step=42,
                    metrics={"val_acc1": 12.5, "val_loss": float("nan")})
    ckpt = load_checkpoint(tmp_path / "epoch_0003")

    assert (ckpt.epoch, ckpt.step, ckpt.config) == (3, 42, {"model": "tiny", "lr": 0.1})
    assert ckpt.metrics == {"val_acc1": 12.5, "val_loss": None}  # strict JSON: NaN -> None
    _assert_same(ckpt.model_state, model.state_dict())

    fresh_model, fresh_opt, fresh_sched, fresh_scaler = _trained(optimizer_cls, steps=1)
    load_model_state(fresh_model, ckpt)
    ckpt.restore_training_state(fresh_opt, fresh_sched, fresh_scaler)
    _assert_same(fresh_model.state_dict(), model.state_dict(), "model")
    _assert_same(fresh_opt.state_dict(), optimizer.state_dict(), "optimizer")
    _assert_same(fresh_sched.state_dict(), scheduler.state_dict(), "scheduler")
    _assert_same(fresh_scaler.state_dict(), scaler.state_dict(), "scaler")


def test_rng_states_are_restored(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    _save(tmp_path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    load_checkpoint(tmp_path / "epoch_0001.json").restore_rng()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_loading_never_uses_pickle(tmp_path, monkeypatch):
    model, optimizer, scheduler, scaler = _trained()
    save_checkpoint(tmp_path, "c", model=model, optimizer=optimizer, scheduler=scheduler,
                    scaler=scaler, config={}, epoch=1, step=1)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    load_checkpoint(tmp_path / "c.safetensors").restore_training_state(optimizer, scheduler, scaler)


def test_flipped_byte_is_reported_as_corrupt_with_both_hashes(tmp_path):
    _save(tmp_path)
    weights = tmp_path / "epoch_0001.safetensors"
    expected_sha = json.loads((tmp_path / "epoch_0001.json").read_text())["sha256"]
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # inside the tensor data, so safetensors itself would not notice
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was modified") as err:
        load_checkpoint(weights)
    assert expected_sha in str(err.value)
    import hashlib

    assert hashlib.sha256(bytes(data)).hexdigest() in str(err.value)


def test_foreign_json_is_not_an_ltpa_checkpoint(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"architecture": "resnet"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match='not an ltpa checkpoint sidecar.*"format"'):
        load_checkpoint(tmp_path / "model.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_checkpoint(tmp_path / "broken")


def test_safetensors_without_sidecar_explains_what_to_do(tmp_path):
    save_file({"weight": torch.randn(2, 2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="has no sidecar weights.json") as err:
        load_checkpoint(tmp_path / "weights.safetensors")
    assert "safetensors.torch.load_file" in str(err.value)


def test_missing_checkpoint_and_missing_weights(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing")
    _save(tmp_path)
    os.unlink(tmp_path / "epoch_0001.safetensors")
    with pytest.raises(CheckpointError, match="epoch_0001.safetensors, which is missing"):
        load_checkpoint(tmp_path / "epoch_0001.json")


def test_unreadable_safetensors_with_matching_hash(tmp_path):
    _save(tmp_path)
    garbage = b"\x00" * 64
    (tmp_path / "epoch_0001.safetensors").write_bytes(garbage)
    sidecar = json.loads((tmp_path / "epoch_0001.json").read_text())
    import hashlib

    sidecar["sha256"] = hashlib.sha256(garbage).hexdigest()
    (tmp_path / "epoch_0001.json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "epoch_0001")


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp_files(tmp_path, monkeypatch):
    _save(tmp_path, "epoch_0001", model=_tiny_model(0))
    _save(tmp_path, "best", model=_tiny_model(0))
    before = _files(tmp_path)
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # the sidecar's temp file: the tensor file is already staged
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    for name in ("epoch_0002", "best"):
        calls["n"] = 0
        with pytest.raises(OSError, match="disk full"):
            _save(tmp_path, name, model=_tiny_model(1), epoch=2)
    monkeypatch.undo()

    assert _files(tmp_path) == before  # nothing added, no temp files left behind
    expected = _tiny_model(0).state_dict()
    for name in ("epoch_0001", "best"):
        _assert_same(load_checkpoint(tmp_path / name).model_state, expected, name)


def test_replacing_a_checkpoint_keeps_one_consistent_pair(tmp_path):
    _save(tmp_path, "best", model=_tiny_model(0), epoch=1)
    _save(tmp_path, "best", model=_tiny_model(1), epoch=5)
    ckpt = load_checkpoint(tmp_path / "best")
    assert ckpt.epoch == 5
    _assert_same(ckpt.model_state, _tiny_model(1).state_dict())
    assert _files(tmp_path) == ["best.json", "best.safetensors"]


def test_load_model_state_lists_missing_and_unexpected_keys(tmp_path):
    _save(tmp_path)
    ckpt = load_checkpoint(tmp_path / "epoch_0001")
    other = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    other.add_module("extra", nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as err:
        load_model_state(other, ckpt)
    message = str(err.value)
    assert "missing key(s) ['extra.bias', 'extra.weight']" in message
    assert "'5.weight'" in message and "unexpected" in message
    missing, unexpected = load_model_state(other, ckpt, strict=False)
    assert missing == ["extra.bias", "extra.weight"] and "5.bias" in unexpected
    assert torch.equal(other[0].weight, ckpt.model_state["0.weight"])


def test_load_model_state_reports_shape_mismatch(tmp_path):
    _save(tmp_path)
    wider = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    with pytest.raises(CheckpointError, match=r"0.weight: checkpoint \(4, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        load_model_state(wider, load_checkpoint(tmp_path / "epoch_0001"), strict=False)


def test_prune_keeps_the_last_k_and_best(tmp_path):
    for epoch in range(1, 6):
        _save(tmp_path, f"epoch_{epoch:04d}", epoch=epoch)
    _save(tmp_path, "best", epoch=2)
    prune_checkpoints(tmp_path, keep_last=2)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert (tmp_path / "best.json").exists() and (tmp_path / "best.safetensors").exists()
    assert not (tmp_path / "epoch_0003.safetensors").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch_0005.json"
    assert load_checkpoint(tmp_path).epoch == 5  # a directory means its latest checkpoint


def test_saved_model_is_unwrapped(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner  # what torch.compile's wrapper looks like

    inner = _tiny_model()
    save_checkpoint(tmp_path, "w", model=Wrapper(inner), config={}, epoch=0, step=0)
    assert set(load_checkpoint(tmp_path / "w").model_state) == set(inner.state_dict())
