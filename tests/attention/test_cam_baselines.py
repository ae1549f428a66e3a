import pytest
import torch

import ltpa
from ltpa.attention import gap_cam_maps, grad_cam_maps
from ltpa.attention.cam_baselines import LogitsOnly, default_cam_layer


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ltpa.create_model("vgg_att3", num_classes=3, width=0.125)


def test_grad_cam_maps_have_the_layer_geometry_and_leave_no_trace(model):
    model.train()
    model.trunk.conv1.conv.weight.requires_grad_(False)  # a caller's frozen parameter stays frozen
    images = torch.randn(2, 3, 32, 32)
    before, hooks = images.clone(), _hooks(model)
    try:
        result = grad_cam_maps(model, images, batch_size=1)
    finally:
        frozen = model.trunk.conv1.conv.weight.requires_grad
        model.trunk.conv1.conv.weight.requires_grad_(True)
    assert set(result) == {"gradcam", "gradcam++", "layercam"}
    for maps in result.values():
        assert maps.levels[0].name == "conv13" and maps.levels[0].stride == 4.0
        assert maps.maps[0].shape == (2, 1, 8, 8) and maps.upsampled[0].shape == (2, 1, 32, 32)
        assert torch.allclose(maps.maps[0].sum((1, 2, 3)), torch.ones(2))
        assert maps.normalisation == "cam" and maps.logits.shape == (2, 3)
    assert torch.equal(images, before)
    assert model.training and all(m.training for m in model.modules())
    assert _hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters())
    assert frozen is False


def test_target_classes_choose_the_explained_class(model):
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    explained = [grad_cam_maps(model, images, methods=["gradcam"], target_classes=k)["gradcam"].maps[0]
                 for k in range(3)]
    assert not all(torch.allclose(explained[0], e) for e in explained[1:])
    with pytest.raises(ValueError, match="target_classes"):
        grad_cam_maps(model, images, methods=["gradcam"], target_classes=7)
    with pytest.raises(ValueError, match="unknown CAM"):
        grad_cam_maps(model, images, methods=["scorecam"])
    with pytest.raises(ValueError, match="not a submodule"):
        grad_cam_maps(model, images, layer="conv99")


def test_default_layer_is_the_deepest_attended_conv(model):
    assert default_cam_layer(model) == "trunk.conv13"
    assert default_cam_layer(ltpa.create_model("vgg_att2", num_classes=3, width=0.125)) == "trunk.conv13"
    assert LogitsOnly(model.eval())(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_gap_cam_matches_the_models_own_map_and_takes_a_class():
    torch.manual_seed(1)
    gap = ltpa.create_model("vgg_gap", num_classes=3, width=0.125).train()
    images = torch.randn(2, 3, 32, 32)
    maps = gap_cam_maps(gap, images)
    assert gap.training
    with torch.no_grad():
        own = gap.eval()(images).maps[0]
    assert torch.allclose(maps.maps[0], own, atol=1e-6)
    other = gap_cam_maps(gap, images, target_classes=torch.tensor([2, 2]))
    assert other.maps[0].shape == (2, 1, 8, 8)
    with pytest.raises(TypeError, match="VGG-GAP"):
        gap_cam_maps(ltpa.create_model("vgg_att1", num_classes=3, width=0.125), images)


@pytest.mark.parametrize("layer", ["trunk.conv13", "trunk.conv7"])
def test_one_shared_pass_gives_each_methods_own_map(model, layer):
    """The shared forward/backward (cut at the layer) gives what grad-cam computes when each
    method runs its own full pass, for the predicted class and for a chosen one."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ltpa.models.baselines import rectify_and_normalise

    model.eval()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    module = model.get_submodule(layer)
    classes = {"gradcam": pytorch_grad_cam.GradCAM, "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
               "layercam": pytorch_grad_cam.LayerCAM}
    for target in (None, 2):
        shared = grad_cam_maps(model, images, layer=layer, target_classes=target)
        for method, cls in classes.items():
            with cls(model=LogitsOnly(model), target_layers=[module]) as cam:
                targets = None if target is None else [ClassifierOutputTarget(target)] * 3
                cam(input_tensor=images, targets=targets)
                store = cam.activations_and_grads
                if targets is None:
                    targets = [ClassifierOutputTarget(int(k)) for k in cam.outputs.argmax(1)]
                own = torch.as_tensor(cam.get_cam_image(images, module, targets, store.activations[0].numpy(),
                                                        store.gradients[0].numpy(), False)).float()
            expected = rectify_and_normalise(own[:, None])
            assert torch.allclose(shared[method].maps[0], expected, rtol=1e-4, atol=1e-6), (method, target)
    for param in model.parameters():
        param.grad = None


class _InplaceAfterLayer(torch.nn.Module):
    """A conv whose output the model changes in place, and a module used twice."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.twice = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)
        self.unused = torch.nn.Conv2d(4, 4, 1)
        self.num_classes = 3

    def forward(self, x):
        y = torch.nn.functional.relu(self.conv(x), inplace=True)
        y = self.twice(self.twice(y))
        return self.fc(y.mean((2, 3)))


def test_the_cut_layer_may_be_changed_in_place_and_a_shared_layer_is_refused():
    torch.manual_seed(0)
    model = _InplaceAfterLayer().eval()
    hooks = _hooks(model)
    maps = grad_cam_maps(model, torch.randn(2, 3, 8, 8), layer="conv", methods=["gradcam"])
    assert maps["gradcam"].maps[0].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="ran 2 times"):
        grad_cam_maps(model, torch.randn(2, 3, 8, 8), layer="twice")
    with pytest.raises(ValueError, match="do not depend on layer 'unused'"):
        grad_cam_maps(model, torch.randn(2, 3, 8, 8), layer="unused")
    assert _hooks(model) == hooks and all(p.requires_grad and p.grad is None for p in model.parameters())
