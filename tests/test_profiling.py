import torch

import ltpa
from ltpa.profiling import optimizer_static_bytes, saved_activation_bytes


def _count(device, **options):
    with torch.device(device):
        torch.manual_seed(0)
        model = ltpa.create_model("vgg_att2", num_classes=5, width=0.125, **options)
        images = torch.zeros(2, 3, 32, 32)
    return saved_activation_bytes(model, images)


def test_meta_device_count_equals_the_count_on_real_tensors():
    assert _count("meta") == _count("cpu") > 0


def test_checkpointing_keeps_far_fewer_activations():
    assert _count("meta", checkpointing=True) < 0.5 * _count("meta")


def test_static_bytes_counts_weights_grads_and_momentum():
    model = torch.nn.Linear(10, 5)
    assert optimizer_static_bytes(model) == 55 * 4 * 3
