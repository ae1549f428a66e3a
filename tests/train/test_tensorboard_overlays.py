"""With TensorBoard on, the trainer writes the attention overlays of a fixed validation batch
every epoch (tag val/attention_mass, step = epoch); with it off, nothing."""
import numpy as np
import pytest
import torch

from ltpa.train import TrainConfig, fit

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _config(**changes):
    base = dict(model_options={"width": 0.0625}, num_classes=4, num_train=64, num_test=16,
                batch_size=16, epochs=2, lr=0.01, device="cpu", precision="fp32", cpu_threads=1)
    return TrainConfig(**{**base, **changes})


def _images(run):
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    return events, (events.Images("val/attention_mass") if "val/attention_mass" in events.Tags()["images"] else [])


def test_an_overlay_image_per_epoch_from_the_same_validation_images(tmp_path, monkeypatch):
    import ltpa.attention.tensorboard as tb

    shown = []
    real = tb.attention_overlay_image

    def recording(model, images, **kwargs):
        shown.append(images.clone())
        return real(model, images, **kwargs)

    monkeypatch.setattr(tb, "attention_overlay_image", recording)
    run = tmp_path / "run"
    fit(_config(tensorboard=True), run, progress=False)
    events, images = _images(run)
    assert [event.step for event in images] == [1, 2]
    assert images[0].width > 0 and images[0].height > 0
    assert len(shown) == 2 and len(shown[0]) == 8 and torch.equal(shown[0], shown[1])
    assert shown[0].dtype == torch.uint8
    assert "val/acc1" in events.Tags()["scalars"]


def test_no_overlays_without_tensorboard(tmp_path):
    run = tmp_path / "run"
    fit(_config(tensorboard=False, epochs=1), run, progress=False)
    assert not (run / "tb").exists()


def test_a_model_without_attention_gets_scalars_but_no_overlays(tmp_path):
    run = tmp_path / "run"
    fit(_config(model="vgg", tensorboard=True, epochs=1), run, progress=False)
    events, images = _images(run)
    assert images == [] and "train/loss" in events.Tags()["scalars"]
    assert np.isfinite(events.Scalars("train/loss")[0].value)
