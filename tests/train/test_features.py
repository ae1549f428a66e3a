"""Presets, ZCA runs, the test report, TensorBoard, ``evaluate_checkpoint``, weight transfer
with head warm-up, and torch.compile's unwrapping."""
import dataclasses
import json

import pytest
import torch
from torch import nn

from ltpa.data.transforms import ZCAWhitening
from ltpa.train import (TrainConfig, describe_preset, evaluate_checkpoint, fit, get_preset,
                        list_presets, load_checkpoint)


def _config(**changes) -> TrainConfig:
    base = dict(model="vgg_att3", model_options={"width": 0.0625, "dropout": False},
                num_classes=5, num_train=50, num_test=15, val_fraction=0.2, epochs=1,
                batch_size=10, eval_batch_size=64, lr=0.01, precision="fp32", device="cpu",
                stuck_warmup_epochs=50, cpu_threads=1)
    base.update(changes)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- presets


def test_every_preset_validates_and_describes_itself_in_one_line():
    names = list_presets()
    assert {"cifar100-vgg-att3", "cifar10-vgg-att2", "svhn-vgg-att3", "cub-vgg-att2",
            "cifar100-vgg", "cifar100-vgg-noatt", "cifar100-vgg-att3-official",
            "cifar100-vgg-att3-cpu", "synthetic-vgg-att3"} <= set(names)
    for name in names:
        line = describe_preset(name)
        assert line.startswith(name) and "\n" not in line
        assert get_preset(name) is not get_preset(name)  # a fresh config every call


def test_presets_encode_the_paper_recipes():
    default = get_preset("cifar100-vgg-att3")
    assert (default.lr, default.momentum, default.weight_decay, default.batch_size) == (0.1, 0.9, 5e-4, 128)
    assert (default.lr_step_epochs, default.lr_gamma, default.epochs, default.drop_last) == (25, 0.5, 300, True)
    official = get_preset("cifar100-vgg-att3-official")
    assert official.lr == 1.0 and official.zca and official.crop_padding == 0 and official.hflip
    assert official.model_options == {"grad_average": True} and official.dampening == 0.9  # Torch7 SGD
    cub = get_preset("cub-vgg-att2")
    assert (cub.image_size, cub.num_classes, cub.epochs, cub.model) == (80, 200, 320, "vgg_att2")
    from ltpa.train.run_setup import make_lr_lambda

    factor = make_lr_lambda(cub, steps_per_epoch=1)
    # 0-based step index e is epoch e + 1: x2 from epoch 30 and 60, then x0.5 every 30
    assert [factor(e) for e in (0, 28, 29, 59, 89, 119, 319)] == [1, 1, 2, 4, 2, 1, 4 * 0.5**8]


def test_unknown_preset_suggests_the_closest_names():
    with pytest.raises(ValueError, match="Did you mean 'cifar100-vgg-att3'"):
        get_preset("cifar100-vgg-att3x")


def test_the_synthetic_preset_is_the_demo_config():
    from ltpa.demo import demo_config

    config = demo_config()
    assert get_preset("synthetic-vgg-att3") == config
    # the recipe the README's search table chose (AVX2: 88.0-97.4% over seeds 0-3)
    assert config.model_options == {"width": 0.1875, "dropout": False, "compat_init": "default"}
    assert (config.epochs, config.lr, config.lr_schedule, config.label_smoothing) == (8, 0.02, "linear", 0.1)


# ----------------------------------------------------------------------------- a ZCA run


@pytest.fixture(scope="module")
def zca_run(tmp_path_factory):
    """A 1-epoch ZCA run. Fitting the real 3072x3072 whitening takes ~15 s on one thread, so
    ``ZCAWhitening.fit`` is replaced by a per-pixel standardisation of the same type; what is
    checked is where it is fitted, stored and applied."""
    fitted_on = []

    def cheap_fit(images, *, epsilon=1e-2, **_):
        fitted_on.append(len(images))
        x = images.reshape(len(images), -1).double() / 255
        matrix = torch.diag((x.var(0) + epsilon).rsqrt())
        return ZCAWhitening(x.mean(0), matrix, epsilon, tuple(images.shape[1:]))

    patch = pytest.MonkeyPatch()
    patch.setattr(ZCAWhitening, "fit", staticmethod(cheap_fit))
    run = tmp_path_factory.mktemp("zca") / "run"
    try:
        result = fit(_config(zca=True, crop_padding=0), run, progress=False)
    finally:
        patch.undo()
    return run, result, fitted_on


def test_zca_is_fitted_on_the_train_split_only_and_saved_with_the_run(zca_run):
    run, result, fitted_on = zca_run
    assert fitted_on == [40]  # 50 train images minus the 10 of the validation split
    state = ZCAWhitening.from_state_dict(__import__("safetensors.torch").torch.load_file(run / "zca.safetensors"))
    assert state.shape == (3, 32, 32)
    assert (run / "config.json").exists() and json.loads((run / "config.json").read_text())["data"]["zca"]


def test_run_writes_the_test_report_confusion_matrix_and_tensorboard_events(zca_run):
    run, result, _ = zca_run
    report = json.loads((run / "test_report.json").read_text())
    assert report["samples"] == 15 and len(report["per_class"]) == 5
    assert sum(map(sum, report["confusion_matrix"])) == 15
    assert report["top1_error"] == pytest.approx(100 - result.test["acc1"])
    assert report["acc5"] == 100.0  # 5 classes: the true class is always in the top 5
    csv_lines = (run / "confusion_matrix.csv").read_text().splitlines()
    assert len(csv_lines) == 6 and csv_lines[0].startswith("true \\ predicted,")
    assert (run / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_evaluate_checkpoint_reproduces_the_run_test_metrics_with_its_zca(zca_run, tmp_path):
    run, result, _ = zca_run
    out = tmp_path / "eval.json"
    report = evaluate_checkpoint(result.checkpoint, split="test", device="cpu", out=out)
    assert report["acc1"] == pytest.approx(result.test["acc1"])
    assert report["loss"] == pytest.approx(result.test["loss"], rel=1e-6)
    assert json.loads(out.read_text())["per_class"] == report["per_class"]
    val = evaluate_checkpoint(run, split="val", device="cpu")  # the run folder: its last epoch
    assert val["samples"] == 10 and (run / "eval" / "epoch_0001_val.json").exists()
    (run / "zca.safetensors").rename(run / "moved.safetensors")
    try:
        with pytest.raises(ValueError, match="zca.safetensors"):
            evaluate_checkpoint(result.checkpoint, device="cpu", out=tmp_path / "x.json")
    finally:
        (run / "moved.safetensors").rename(run / "zca.safetensors")


# ----------------------------------------------------------------------------- transfer


def test_init_transfers_all_but_the_head_and_head_warmup_keeps_the_trunk(tmp_path):
    source = fit(_config(), tmp_path / "source", progress=False)
    target = tmp_path / "target"
    fit(_config(init=str(source.last_checkpoint), epochs=2, head_warmup_epochs=1, keep_last=0,
                seed=1), target, progress=False)
    report = json.loads((target / "transfer_report.json").read_text())
    assert report and "head.classifier" in (target / "transfer_report.txt").read_text()
    start = load_checkpoint(source.last_checkpoint).model_state
    after1 = load_checkpoint(target / "checkpoints" / "epoch_0001").model_state
    after2 = load_checkpoint(target / "checkpoints" / "epoch_0002").model_state
    trunk = [k for k in start if k.startswith("trunk.") and k.endswith("conv.weight")]
    assert trunk and all(torch.equal(start[k], after1[k]) for k in trunk)  # warm-up: head only
    assert not torch.equal(start["head.classifier.weight"], after1["head.classifier.weight"])
    assert any(not torch.equal(start[k], after2[k]) for k in trunk)  # then everything trains


def test_compiled_model_is_saved_unwrapped(tmp_path, monkeypatch):
    class Compiled(nn.Module):  # what torch.compile returns, without the minutes of tracing
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, images):
            return self._orig_mod(images)

    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(module) or Compiled(module))
    result = fit(_config(compile=True, limit_train_batches=1), tmp_path / "run", progress=False)
    assert calls
    keys = load_checkpoint(result.last_checkpoint).model_state.keys()
    assert keys and not any(k.startswith("_orig_mod") for k in keys)


def test_new_config_fields_are_validated():
    with pytest.raises(ValueError, match="transfer"):
        _config(transfer=("all-but-head",)).validate()
    with pytest.raises(ValueError, match="head_warmup_epochs"):
        _config(head_warmup_epochs=1, epochs=1).validate()
    with pytest.raises(ValueError, match="resize_mode"):
        _config(resize_mode="stretch").validate()
    with pytest.raises(ValueError, match="lr_schedule"):
        _config(lr_schedule="onecycle").validate()
    for smoothing in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="label_smoothing"):
            _config(label_smoothing=smoothing).validate()
    assert dataclasses.replace(_config(), lr_multipliers={"trunk": 0.1}).validate()


def test_gradient_accumulation_gives_the_same_step_without_batchnorm_effects(tmp_path):
    """Two micro-batches of a model without BN-in-train effects give the single-batch gradient."""
    import torch
    from torch import nn

    from ltpa.train.loop import _accumulate
    from ltpa.train.precision import resolve_precision

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            from ltpa.models.output import AttentionOutput

            return AttentionOutput(self.fc(x.flatten(1)), (), None, (), x.flatten(1), "none")

    torch.manual_seed(0)
    model = Linear()
    images, targets = torch.randn(6, 3, 2, 2), torch.randint(0, 3, (6,))
    precision = resolve_precision("fp32", False, "cpu")
    scaler = precision.grad_scaler()
    grads = []
    for micro in (1, 2, 3):
        model.zero_grad()
        _, loss = _accumulate(model, images, targets, precision, scaler, micro)
        grads.append((model.fc.weight.grad.clone(), float(loss)))
    for grad, loss in grads[1:]:
        torch.testing.assert_close(grad, grads[0][0])
        assert abs(loss - grads[0][1]) < 1e-6
