"""TensorBoard overlays: the fixed validation batch on the mass scale, one picture per call, written
under the tag at the step; the model's mode and the images are left as they were."""
import numpy as np
import pytest
import torch

import ltpa
from ltpa.attention import attention_overlay_image, compute_maps, log_attention_overlays
from ltpa.inference import normalise


class _Writer:
    def __init__(self):
        self.images = []

    def add_image(self, tag, picture, global_step=None, dataformats="CHW"):
        self.images.append((tag, picture, global_step, dataformats))


def _prepare(images):
    return normalise(images, (0.5,) * 3, (0.25,) * 3)


def test_overlay_picture_is_rgb_and_follows_the_maps():
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att2", num_classes=3, width=0.125).train()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    before = images.clone()
    picture = attention_overlay_image(model, images, prepare=_prepare, targets=torch.tensor([0, 2]),
                                      class_names=["a", "b", "c"])
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert model.training and torch.equal(images, before)
    # the picture shows these maps: other weights give another picture
    other = ltpa.create_model("vgg_att2", num_classes=3, width=0.125)
    assert not torch.equal(compute_maps(model, _prepare(images)).maps[0], compute_maps(other, _prepare(images)).maps[0])
    assert not np.array_equal(picture, attention_overlay_image(other, images, prepare=_prepare,
                                                               targets=torch.tensor([0, 2]),
                                                               class_names=["a", "b", "c"]))


def test_log_attention_overlays_writes_one_image_per_call_at_the_step():
    model = ltpa.create_model("vgg_att1", num_classes=2, width=0.125)
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    writer = _Writer()
    picture = log_attention_overlays(writer, model, images, prepare=_prepare, step=7)
    assert len(writer.images) == 1
    tag, written, step, formats = writer.images[0]
    assert tag == "val/attention_mass" and step == 7 and formats == "HWC" and written is picture
    assert log_attention_overlays(None, model, images, prepare=_prepare, step=8).shape == (0, 0, 3)
    with pytest.raises(ValueError, match="uint8"):
        attention_overlay_image(model, images.float(), prepare=_prepare)
    with pytest.raises(ValueError, match="mode"):
        attention_overlay_image(model, images, prepare=_prepare, mode="stretched")
