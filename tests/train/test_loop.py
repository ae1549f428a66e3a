import json
import math
import shutil

import pytest
import torch
from torch import nn

import ltpa.models
from ltpa.data.synthetic import SyntheticLocalisation
from ltpa.models.output import AttentionOutput
from ltpa.train import TrainConfig, TrainingDiverged, fit, load_checkpoint
from ltpa.train.data_setup import BatchLoader, augment_batch, stratified_split
from ltpa.train.loop import make_lr_lambda, train_one_epoch
from ltpa.train.precision import resolve_precision


def _config(**changes) -> TrainConfig:
    """A run small enough for a 2-core CPU: a 1/16-width VGG-att3 on 64 synthetic images
    (dropout off so that 9 steps reliably lower the training loss). One thread: a second one
    buys nothing at this size and, on a loaded machine, its spin-waits made steps 50x slower."""
    base = dict(model="vgg_att3", model_options={"width": 0.0625, "dropout": False},
                num_classes=4, num_train=64, num_test=16, val_fraction=0.25, epochs=2,
                batch_size=16, eval_batch_size=64, lr=0.01, precision="fp32", device="cpu",
                log_every=2, stuck_warmup_epochs=50, cpu_threads=1)
    base.update(changes)
    return TrainConfig(**base)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One completed 1-epoch run; tests copy it before touching it."""
    run = tmp_path_factory.mktemp("runs") / "base"
    fit(_config(epochs=1), run, progress=False)
    return run


def _copy(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_overfit_one_fixed_batch(precision):
    # Learning, checked with a wide margin on every CPU kernel (AVX-512, AVX2, no SIMD; bf16
    # emulated without AVX-512 BF16): 15 SGD steps on the same 8 images take the loss from ~ln(4)
    # to below a tenth of it (measured: 1/89 to 1/309 over seeds 0-7 and all three kernel
    # settings). A few steps on fresh batches, as a short fit() run takes, are no test of
    # learning: their loss can go up (it did, on AVX2).
    data = SyntheticLocalisation(8, image_size=32, num_classes=4, seed=0, split="train")
    torch.manual_seed(0)
    # PyTorch's init for u: the official N(0, sqrt 2) starts from near one-hot maps and learns
    # erratically at this width (see ltpa.demo.demo_config).
    model = ltpa.models.create_model("vgg_att3", num_classes=4, width=0.0625, dropout=False,
                                     compat_init="default")
    numerics = resolve_precision(precision, True, "cpu")
    model.to(memory_format=numerics.memory_format)
    loader = BatchLoader(data.images, data.targets, batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3,
                         device="cpu", shuffle=False, memory_format=numerics.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    losses = [train_one_epoch(model, loader, optimizer, scheduler, numerics.grad_scaler(), numerics,
                              epoch=epoch, progress=False)["loss"] for epoch in range(1, 16)]
    assert losses[0] > 0.9  # starts near chance, ln(4) = 1.39 (measured 1.22 to 1.59)
    assert losses[-1] < losses[0] / 10, losses


def test_tiny_run_writes_the_run_folder(tmp_path):
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    result = fit(_config(epochs=3, hflip=False, crop_padding=0), run, progress=True)
    assert torch.get_num_threads() == threads  # cpu_threads=1 applied only during fit

    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [3, 6, 9]  # 48 train images, batches of 16
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in records)
    assert {"lr", "train_acc1", "val_loss", "val_acc1", "images_per_s", "seconds"} <= set(records[0])

    saved = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert saved.mean is not None and len(saved.std) == 3  # computed on the train split
    environment = json.loads((run / "environment.json").read_text())
    assert environment["format"] == "ltpa-run" and environment["device"] == "cpu"
    assert environment["torch"] == torch.__version__ and "git_commit" in environment
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert environment["cpu_model"] and isinstance(environment["cpu_native_bf16"], bool)
    assert environment["precision"] == "fp32"
    assert environment["precision_choice"] == "precision fp32 as configured"
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 3/3" in (run / "train.log").read_text()

    final = json.loads((run / "final_metrics.json").read_text())
    best_epoch = max(records, key=lambda r: r["val_acc1"])["epoch"]  # first max wins ties
    # keep_last=2 epoch pairs, plus the best one (never pruned), the best.* links, the record
    kept = {f"epoch_{e:04d}.{ext}" for e in {2, 3, best_epoch} for ext in ("json", "safetensors")}
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == sorted({"best.json", "best.safetensors", "state.json", *kept})
    record = json.loads((run / "checkpoints" / "state.json").read_text())
    assert record["latest"] == "epoch_0003" and record["best"]["epoch"] == best_epoch
    assert final["test_weights"] == result.test_weights == "best"
    assert final["tested_epoch"] == best_epoch == load_checkpoint(run / "checkpoints/best").epoch
    assert final["test"]["samples"] == 16 and 0.0 <= final["test"]["acc1"] <= 100.0
    assert result.test == final["test"]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, optimizer):
    # Dropout, flips and crops are all on: the resumed run must reproduce the RNG streams too.
    straight, split = tmp_path / "straight", tmp_path / "split"
    options = {"width": 0.0625, "dropout": True}
    recipe = dict(model_options=options, optimizer=optimizer)
    if optimizer == "adamw":
        recipe.update(lr=1e-3, weight_decay=0.05)
    fit(_config(epochs=2, **recipe), straight, progress=False)
    fit(_config(epochs=1, **recipe), split, progress=False)
    fit(_config(epochs=2, **recipe), split, resume=True, progress=False)

    a = load_checkpoint(straight / "checkpoints" / "epoch_0002")
    b = load_checkpoint(split / "checkpoints" / "epoch_0002")
    assert (a.epoch, a.step) == (b.epoch, b.step) == (2, 6)
    assert a.model_state.keys() == b.model_state.keys()
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key
    opt_a, opt_b = a.states["optimizer"], b.states["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    buffers = {"sgd": {"momentum_buffer"}, "adamw": {"step", "exp_avg", "exp_avg_sq"}}[optimizer]
    for index, state in opt_a["state"].items():
        assert set(state) == buffers == set(opt_b["state"][index])
        for name in buffers:
            assert torch.equal(state[name], opt_b["state"][index][name]), (index, name)
    assert a.states["scheduler"] == b.states["scheduler"]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("images_per_s", "seconds")}  # noqa: E731
    assert [strip(r) for r in _records(straight)] == [strip(r) for r in _records(split)]
    environment = json.loads((split / "environment.json").read_text())
    assert len(environment["resumed"]) == 1


def test_nan_loss_stops_the_run_at_once(tmp_path, monkeypatch):
    class NaNModel(nn.Module):
        def __init__(self, num_classes, **_):
            super().__init__()
            self.linear = nn.Linear(3, num_classes)
            self.calls = 0

        def forward(self, images):
            logits = self.linear(images.mean(dim=(2, 3)))
            return AttentionOutput(logits=logits * float("nan"), maps=(), scores=None, levels=(),
                                   features=logits, normalisation="none")

    monkeypatch.setattr(ltpa.models, "create_model", lambda name, num_classes, **kw: NaNModel(num_classes))
    with pytest.raises(TrainingDiverged, match="training loss became nan in epoch 1 \\(batch 1 of") as err:
        fit(_config(epochs=3), tmp_path / "run", progress=False)
    assert "lower the learning rate" in str(err.value)
    # library terms in the library, flags on the command line
    assert "set model_options.grad_average=True in the config" in str(err.value) and "--set" not in str(err.value)
    assert "pass --set model_options.grad_average=true" in err.value.render(cli=True)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_loss_stuck_at_chance_stops_after_the_warmup(tmp_path, monkeypatch):
    class Constant(nn.Module):  # logits always 0: the loss is exactly ln(K)
        def __init__(self, num_classes, **_):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(()))
            self.num_classes = num_classes

        def forward(self, images):
            logits = images.new_zeros(len(images), self.num_classes) + 0 * self.bias
            return AttentionOutput(logits=logits, maps=(), scores=None, levels=(),
                                   features=logits, normalisation="none")

    monkeypatch.setattr(ltpa.models, "create_model", lambda name, num_classes, **kw: Constant(num_classes))
    with pytest.raises(TrainingDiverged, match=r"after 2 epoch\(s\) the training loss is 1.3863") as err:
        fit(_config(epochs=5, stuck_warmup_epochs=2), tmp_path / "run", progress=False)
    assert "check the input normalisation" in str(err.value)
    assert "set divergence_check=False in the config" in str(err.value)
    assert "pass --set divergence_check=false" in err.value.render(cli=True)
    assert [r["epoch"] for r in _records(tmp_path / "run")] == [1, 2]
    # divergence_check=false lets the same run finish
    fit(_config(epochs=3, stuck_warmup_epochs=2, divergence_check=False), tmp_path / "run2",
        progress=False)


def test_without_a_validation_split_the_final_weights_are_tested(tmp_path):
    result = fit(_config(epochs=1, val_fraction=0.0, limit_train_batches=1), tmp_path / "run",
                 progress=False)
    assert result.test_weights == "final" and result.val == {}
    assert result.checkpoint == tmp_path / "run" / "checkpoints" / "epoch_0001.json"
    assert not (tmp_path / "run" / "checkpoints" / "best.json").exists()
    assert _records(tmp_path / "run")[0]["step"] == 1  # limit_train_batches=1


# ----------------------------------------------------------------------------- output folder


def test_refuses_a_folder_that_holds_a_run_and_changes_nothing(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    before = _snapshot(run)
    with pytest.raises(ValueError, match="already holds an ltpa run.*resume=True.*overwrite=True"):
        fit(_config(epochs=1), run, progress=False)
    assert _snapshot(run) == before


def test_refuses_a_non_empty_folder_and_leaves_its_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not empty \\(notes.txt\\)"):
        fit(_config(epochs=1), folder, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    (folder / "config.json").write_text("{}")  # not a run: overwrite must not delete it
    with pytest.raises(ValueError, match="refusing to delete them"):
        fit(_config(epochs=1), folder, overwrite=True, progress=False)
    assert (folder / "config.json").read_text() == "{}"


def test_overwrite_replaces_a_run_but_keeps_foreign_files(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    (run / "notes.txt").write_text("keep me")
    (run / "checkpoints" / "epoch_0009.json").write_text("stale")
    fit(_config(epochs=1, seed=1), run, overwrite=True, progress=False)
    assert (run / "notes.txt").read_text() == "keep me"
    assert not (run / "checkpoints" / "epoch_0009.json").exists()
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())).seed == 1
    assert len(_records(run)) == 1


def test_resume_needs_a_run_and_a_compatible_config(finished_run, tmp_path):
    with pytest.raises(ValueError, match="does not hold an ltpa run"):
        fit(_config(), tmp_path / "empty", resume=True, progress=False)
    run = _copy(finished_run, tmp_path)
    before = _snapshot(run)
    with pytest.raises(ValueError, match="contradict"):
        fit(_config(), run, resume=True, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="lr: run has 0.01, given 0.1"):
        fit(_config(lr=0.1), run, resume=True, progress=False)
    assert _snapshot(run) == before


def test_resume_of_a_finished_run_only_retests(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    result = fit(_config(epochs=1), run, resume=True, progress=False)
    assert result.epochs_completed == 1 and len(_records(run)) == 1
    assert result.test == json.loads((finished_run / "final_metrics.json").read_text())["test"]


# ----------------------------------------------------------------------------- pieces


def test_lr_schedule_steps_milestones_and_warmup():
    # as cifar.torch: epochs 1-24 at the full lr, epoch 25 (steps 240-249) at half, epoch 50 a quarter
    step = make_lr_lambda(TrainConfig(lr_step_epochs=25, lr_gamma=0.5), steps_per_epoch=10)
    assert [step(s) for s in (0, 239, 240, 490)] == [1.0, 1.0, 0.5, 0.25]
    multi = make_lr_lambda(TrainConfig(lr_milestones=(2, 4), lr_milestone_gammas=(2.0, 0.5)), 10)
    assert [multi(s) for s in (9, 10, 30)] == [1.0, 2.0, 1.0]
    warm = make_lr_lambda(TrainConfig(warmup_epochs=1, lr_step_epochs=0), 4)
    assert [warm(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_and_linear_schedules_decay_to_zero_after_the_warm_up():
    # 4 epochs of 10 steps, 1 epoch of warm-up: the peak at step 9, then down to 0 at step 40
    cosine = make_lr_lambda(TrainConfig(epochs=4, lr_schedule="cosine", warmup_epochs=1), 10)
    linear = make_lr_lambda(TrainConfig(epochs=4, lr_schedule="linear", warmup_epochs=1), 10)
    assert cosine(0) == linear(0) == 0.1 and cosine(9) == linear(9) == 1.0
    assert linear(25) == pytest.approx(0.5) and cosine(25) == pytest.approx(0.5)
    assert cosine(17) > linear(17) > 0 and cosine(33) < linear(33)
    assert cosine(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    assert linear(40) == cosine(40) == 0.0  # milestones and steps do not apply to them
    values = [cosine(s) for s in range(10, 40)]
    assert values == sorted(values, reverse=True)


def test_label_smoothing_raises_the_loss_of_a_confident_correct_batch():
    from ltpa.train.loop import _accumulate
    from ltpa.train.precision import resolve_precision

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            return type("Out", (), {"logits": x * self.w})()

    logits = torch.tensor([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    targets = torch.tensor([0, 1])
    precision = resolve_precision("fp32", False, "cpu")
    scaler = precision.grad_scaler()
    _, plain = _accumulate(Fixed(), logits, targets, precision, scaler, 1)
    _, smooth = _accumulate(Fixed(), logits, targets, precision, scaler, 1, label_smoothing=0.3)
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.3)
    assert smooth == pytest.approx(float(expected)) and smooth > 10 * plain


def test_stratified_split_keeps_class_shares_and_is_seeded():
    targets = torch.arange(100) % 4
    train, val = stratified_split(targets, 0.2, seed=3)
    assert len(val) == 20 and torch.bincount(targets[val]).tolist() == [5, 5, 5, 5]
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 100
    assert torch.equal(val, stratified_split(targets, 0.2, seed=3)[1])
    assert not torch.equal(val, stratified_split(targets, 0.2, seed=4)[1])


def test_augmentation_flips_and_crops_with_zero_padding_without_touching_the_input():
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    original = images.clone()
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(images, hflip=True, crop_padding=2, generator=gen)
    assert torch.equal(images, original) and out.shape == images.shape and out.dtype == torch.uint8
    # each output is a shifted (maybe flipped) copy; zero rows/cols appear exactly where padded
    assert (out == 0).any()
    flipped = augment_batch(images, hflip=True, crop_padding=0, generator=torch.Generator().manual_seed(0))
    per_image = [torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images)]
    assert all(per_image) and 0 < sum(torch.equal(f, i) for f, i in zip(flipped, images)) < 64


def test_loader_order_depends_only_on_seed_and_epoch(caplog):
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    targets = torch.arange(10)
    kwargs = dict(batch_size=4, mean=(0.0,) * 3, std=(1 / 255,) * 3, device="cpu", shuffle=True,
                  drop_last=True, seed=7)
    with caplog.at_level("INFO", logger="ltpa"):
        loader = BatchLoader(images, targets, **kwargs)
    assert "dropping the last partial batch of 2 of 10 images" in caplog.text
    order = lambda ld, e: (ld.set_epoch(e), torch.cat([t for _, t in ld]))[1]  # noqa: E731
    assert len(loader) == 2 and len(order(loader, 0)) == 8
    assert torch.equal(order(loader, 3), order(BatchLoader(images, targets, **kwargs), 3))
    assert not torch.equal(order(loader, 3), order(loader, 4))
    images_out, targets_out = next(iter(loader))
    assert torch.equal(images_out[:, 0, 0, 0], targets_out.float())  # normalised back to the value
