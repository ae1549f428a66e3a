"""RN-att2/3 and the pre-activation ResNet baseline: paper geometry, counts, names, probes."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ltpa

SMALL = dict(depth=20, width=0.25)


def _images(size, batch=2, seed=0):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_rn_att_levels_are_the_paper_stages_at_32px():
    model = ltpa.create_model("rn_att2", num_classes=10).eval()
    assert [(lv.name, lv.channels, lv.stride, lv.offset) for lv in model.levels] == [
        ("stage2", 128, 2.0, 0.5), ("stage3", 256, 4.0, 0.5)]
    with torch.no_grad():
        out = model(_images(32))
    assert [tuple(m.shape) for m in out.maps] == [(2, 1, 16, 16), (2, 1, 8, 8)]
    assert out.features.shape == (2, 128 + 256)  # the paper's 384-d concat
    att3 = ltpa.create_model("rn_att3", num_classes=10, **SMALL)
    assert [lv.name for lv in att3.levels] == ["stage1", "stage2", "stage3"]
    assert [tuple(m.shape[2:]) for m in att3(_images(32)).maps] == [(32, 32), (16, 16), (8, 8)]


def test_parameter_counts_of_resnet164_models():
    baseline = ltpa.create_model("preact_resnet", num_classes=10)
    rn_att2 = ltpa.create_model("rn_att2", num_classes=10)
    rn_att2_100 = ltpa.create_model("rn_att2", num_classes=100)
    counts = {"preact_resnet trunk": _count(baseline.trunk), "preact_resnet (10)": _count(baseline),
              "rn_att2 (10)": _count(rn_att2), "rn_att2 (100)": _count(rn_att2_100)}
    print(counts)
    # He et al. (2016) report 1.7M parameters for the CIFAR-10 pre-activation ResNet-164
    assert counts["preact_resnet (10)"] / 1e6 == pytest.approx(1.70, abs=0.01)
    assert counts == {"preact_resnet trunk": 1_700_176, "preact_resnet (10)": 1_703_258,
                      "rn_att2 (10)": 2_395_482, "rn_att2 (100)": 2_430_132}
    assert len(rn_att2.trunk.stage2) == 18  # n = (164 - 2) / 9


def _linearised(model):
    """Every trunk ReLU follows a BN; a huge BN shift in eval keeps each ReLU in its linear part."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.bias, 1e4)
    return model.eval()


def _support_centre(grad, axis):
    """Continuous centre of the non-zero extent of ``grad`` (H, W) along ``axis`` (0 = y)."""
    hits = grad.abs().sum(dim=1 - axis).nonzero().flatten()
    first, last = hits.min().item(), hits.max().item()
    return first, last, (first + last + 1) / 2


@pytest.mark.parametrize("name", ["rn_att2", "rn_att3"])
def test_level_geometry_matches_a_receptive_field_probe(name):
    size = 64
    model = _linearised(ltpa.create_model(name, num_classes=3, **SMALL))
    for level in model.levels:
        images = _images(size, batch=1).requires_grad_(True)
        local = model.forward_features(images)[level.name]  # (1, C, h, w)
        jy, jx = local.shape[2] // 2, local.shape[3] // 2 - 1
        local[0, :, jy, jx].sum().backward()
        grad = images.grad[0].sum(0)  # (H, W)
        for axis, j in ((0, jy), (1, jx)):
            first, last, centre = _support_centre(grad, axis)
            assert 0 < first and last < size - 1, "receptive field clipped: use a larger probe"
            assert centre == level.offset + j * level.stride, (level, axis)


def test_state_dict_names_use_the_shared_groups():
    model = ltpa.create_model("rn_att2", num_classes=10, **SMALL)
    names = set(model.state_dict())
    assert {n.split(".")[0] for n in names} == {"trunk", "global", "attention", "head"}
    for expected in ["trunk.stem.weight", "trunk.stage2.0.shortcut.weight", "trunk.stage3.1.conv2.weight",
                     "global.bn.weight", "global.conv.conv.weight", "global.conv.bn.running_var",
                     "global.fc.weight", "attention.0.compat.weight", "attention.g32.fc.weight",
                     "head.norms.1.weight", "head.classifier.weight"]:
        assert expected in names, expected
    assert not any(n.startswith("attention.g64") for n in names)  # stage 3 matches g: no projection


def test_baseline_shares_trunk_and_final_bn_names_with_rn_att2():
    att = ltpa.create_model("rn_att2", num_classes=10, **SMALL).state_dict()
    plain = ltpa.create_model("preact_resnet", num_classes=10, **SMALL).state_dict()
    shared = [k for k in plain if not k.startswith("head.")]
    assert all(k in att and att[k].shape == plain[k].shape for k in shared)
    assert {k.split(".")[0] for k in plain} == {"trunk", "global", "head"}
    assert "head.classifier.weight" in plain


def test_global_branch_equals_the_papers_fixed_pools_at_32px():
    model = ltpa.create_model("rn_att2", num_classes=10, **SMALL).eval()
    branch = model.get_submodule("global")
    stage3 = torch.randn(2, model.trunk.out_channels, 8, 8)
    with torch.no_grad():
        x = F.max_pool2d(F.relu(branch.bn(stage3)), 2)
        expected = branch.fc(F.max_pool2d(branch.conv(x), 4).flatten(1))  # 4x4 -> 1x1
        torch.testing.assert_close(branch(stage3), expected)


def test_paper_dropouts_and_head_width():
    model = ltpa.create_model("rn_att2", num_classes=10, **SMALL)
    assert model.head.drop.p == 0.3
    assert model.get_submodule("global").conv.drop.p == 0.4
    assert model.get_submodule("global").drop.p == 0.5
    assert model.attention["g32"].drop.p == 0.5
    no_drop = ltpa.create_model("rn_att2", num_classes=10, dropout=False, **SMALL)
    assert not any(isinstance(m, nn.Dropout) for m in no_drop.modules())


@pytest.mark.parametrize("depth", [100, 1, 165])
def test_depth_must_be_9n_plus_2(depth):
    with pytest.raises(ValueError, match=r"9n \+ 2"):
        ltpa.create_model("rn_att2", depth=depth)


def test_smallest_input_runs_and_smaller_is_a_clear_error():
    model = ltpa.create_model("rn_att2", num_classes=3, **SMALL).eval()
    assert model.min_input_size == 5
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 5, 5)).logits.shape == (1, 3)
    with pytest.raises(ValueError, match="at least 5x5"):
        model(torch.zeros(1, 3, 4, 4))


def test_bad_levels_and_options_are_rejected():
    from ltpa.models.resnet_att import RNAttention
    with pytest.raises(ValueError, match="subset of stages"):
        RNAttention(num_classes=3, levels=(4,), **SMALL)
    with pytest.raises(ValueError, match="compat"):
        ltpa.create_model("rn_att2", compat="cosine")
    with pytest.raises(TypeError, match="fixed"):
        ltpa.create_model("rn_att2", levels=(3,))


def test_grad_average_gives_g_the_mean_over_levels():
    torch.manual_seed(0)
    plain = ltpa.create_model("rn_att2", num_classes=4, **SMALL).eval()
    averaged = ltpa.create_model("rn_att2", num_classes=4, grad_average=True, **SMALL).eval()
    averaged.load_state_dict(plain.state_dict())
    for model in (plain, averaged):
        model(_images(32)).logits.sum().backward()
    torch.testing.assert_close(averaged.get_submodule("global").fc.weight.grad,
                               plain.get_submodule("global").fc.weight.grad / 2)


def test_reset_classifier_keeps_everything_else():
    for name in ("rn_att2", "preact_resnet"):
        model = ltpa.create_model(name, num_classes=10, **SMALL)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.reset_classifier(7)
        after = model.state_dict()
        assert after["head.classifier.weight"].shape[0] == 7
        assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head.classifier"))


@pytest.mark.parametrize("stride_in", ["conv1", "conv2"])
def test_stride_placement_keeps_the_geometry(stride_in):
    model = ltpa.create_model("rn_att2", num_classes=3, depth=20, stride_in=stride_in)
    block = model.trunk.stage2[0]
    strides = (block.conv1.stride, block.conv2.stride)
    assert strides == (((2, 2), (1, 1)) if stride_in == "conv1" else ((1, 1), (2, 2)))
    out = model(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape[2:]) for m in out.maps] == [(16, 16), (8, 8)]
    assert [lv.offset for lv in out.levels] == [0.5, 0.5]
