"""Model-parameter randomisation (Adebayo et al. 2018): the right parameters change, on a copy, in
the right order; an input-only map is flagged and a map that depends on weights is not."""
import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ltpa
from ltpa.attention.sanity import (parameter_groups, randomised_copy, recompute_bn_stats, sanity_check,
                                   write_sanity_report)
from ltpa.data.synthetic import SyntheticLocalisation
from ltpa.models.output import AttentionOutput, LevelInfo


def _trained_like(name="vgg_att3", seed=0):
    """A small model whose every parameter and BatchNorm statistic is far from its init values, as
    after training (so that a reset visibly changes each of them)."""
    torch.manual_seed(seed)
    model = ltpa.create_model(name, num_classes=3, width=0.125)
    with torch.no_grad():
        for tensor in [*model.parameters(), *(b for n, b in model.named_buffers() if "running_mean" in n)]:
            tensor.add_(0.05 * torch.randn_like(tensor))  # zero-mean: activations keep their scale
        for name, buffer in model.named_buffers():
            if "running_var" in name:
                buffer.mul_(1 + 0.2 * torch.rand_like(buffer))
    return model


def _snapshot(model):
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_groups_cover_every_parameter_once_top_down():
    model = _trained_like()
    groups = parameter_groups(model)
    names = [g.name for g in groups]
    assert names[:3] == ["head", "attention", "global"]
    assert names[3:] == [f"trunk.conv{k}" for k in range(15, 0, -1)]
    covered = [p for g in groups for p in g.parameter_names(model)]
    assert sorted(covered) == sorted(n for n, _ in model.named_parameters()) and len(set(covered)) == len(covered)


@pytest.mark.parametrize("group", ["head", "attention", "global", "trunk.conv13", "trunk.conv1"])
@pytest.mark.parametrize("init", ["reset", "shuffle"])
def test_randomising_a_group_changes_exactly_its_parameters_on_a_copy(group, init):
    model = _trained_like().train()
    before = _snapshot(model)
    chosen = next(g for g in parameter_groups(model) if g.name == group)
    copy = randomised_copy(model, [chosen], init=init, bn_stats="keep", seed=3)
    inside = set(chosen.parameter_names(model))
    after = dict(copy.named_parameters())
    for name, param in model.named_parameters():
        changed = not torch.equal(after[name], param)
        assert changed == (name in inside), name
        if init == "shuffle" and name in inside:  # the same values, rearranged
            assert torch.equal(after[name].flatten().sort().values, param.flatten().sort().values)
    # BatchNorm statistics kept ("keep"), everything in the caller's model untouched
    for name, buffer in copy.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
    # the same seed draws the same values; another seed other values
    again = randomised_copy(model, [chosen], init=init, bn_stats="keep", seed=3)
    other = randomised_copy(model, [chosen], init=init, bn_stats="keep", seed=4)
    first = next(n for n in chosen.parameter_names(model) if after[n].dim() > 1)  # (BatchNorm resets to 1)
    assert torch.equal(dict(again.named_parameters())[first], after[first])
    assert not torch.equal(dict(other.named_parameters())[first], after[first])


def test_batchnorm_statistics_reset_or_recomputed_on_the_images():
    model = _trained_like()
    conv = next(g for g in parameter_groups(model) if g.name == "trunk.conv3")
    reset = randomised_copy(model, [conv], bn_stats="reset")
    bn = reset.trunk.conv3.bn
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert torch.equal(reset.trunk.conv4.bn.running_mean, model.trunk.conv4.bn.running_mean)  # other layers kept
    images = torch.randn(6, 3, 32, 32)
    recompute_bn_stats(reset, [conv], images)
    # the statistics are now those of conv3's output on these images, in eval mode otherwise
    captured = {}
    handle = reset.trunk.conv3.conv.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    reset.eval()(images)
    handle.remove()
    x = captured["x"].detach()
    torch.testing.assert_close(bn.running_mean, x.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, x.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert not reset.training and bn.momentum == model.trunk.conv3.bn.momentum


class _EdgeModel(nn.Module):
    """A toy attention model: trunk, g, attention and head like ltpa's, but its map is either
    computed from the image's edges alone (``from_edges``) or by a 1x1 conv on the trunk's
    features (so it depends on the weights)."""

    levels = (LevelInfo("conv2", 4, 1.0, 0.5),)

    def __init__(self, from_edges: bool):
        super().__init__()
        self.from_edges = from_edges
        self.trunk = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 8, 3, padding=1), act=nn.ReLU(),
                                               conv2=nn.Conv2d(8, 4, 3, padding=1)))
        self.add_module("global", nn.Linear(4, 4))
        self.attention = nn.Conv2d(4, 1, 1)
        self.head = nn.Linear(4, 2)
        self.num_classes = 2

    def forward(self, images):
        features = self.trunk(images)
        g = self._modules["global"](features.mean((2, 3)))
        if self.from_edges:
            grey = images.mean(1, keepdim=True)
            dx = F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0))
            dy = F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1))
            scores = 4 * (dx**2 + dy**2).sqrt()
        else:
            scores = self.attention(features)
        maps = scores.flatten(1).softmax(1).view_as(scores)
        return AttentionOutput(self.head(g), (maps,), (scores,), self.levels, g, "softmax")


@pytest.mark.parametrize("from_edges", [True, False])
def test_a_map_of_the_input_alone_is_flagged_and_a_learned_one_is_not(from_edges):
    torch.manual_seed(0)
    model = _EdgeModel(from_edges)
    data = SyntheticLocalisation(6, image_size=24, num_classes=2, seed=0, split="test")
    result = sanity_check(model, data.images, mean=(0.4,) * 3, std=(0.2,) * 3, methods=("attention",),
                          modes=("cascading",), bn_stats="reset", show=1)
    verdict = result["verdict"]["attention/conv2"]
    assert [s["stage"] for s in result["cascading"]] == ["head", "attention", "global", "trunk.conv2",
                                                        "trunk.conv1"]
    assert verdict["flagged"] is from_edges
    text = next(line for line in result["explanation"].splitlines() if line.startswith("attention/conv2"))
    assert ("reflects the input's edges/positions" in text) is from_edges
    if from_edges:
        assert verdict["spearman_all_random"] == pytest.approx(1.0)
    else:
        assert verdict["spearman_all_random"] < 0.5
        # the map cannot depend on the head or on g: it drops once u or the trunk is random
        assert verdict["first_stage_below_threshold"] in ("attention", "trunk.conv2", "trunk.conv1")
        head = result["cascading"][0]["similarity"]["attention/conv2"]["spearman"]["mean"]
        assert head == pytest.approx(1.0)


def test_sanity_check_on_vgg_att3_with_grad_cam_writes_json_text_and_figure(tmp_path):
    model = _trained_like("vgg_att2").train()
    before = _snapshot(model)
    data = SyntheticLocalisation(3, image_size=32, num_classes=3, seed=0, split="test")
    result = sanity_check(model, data.images, mean=(0.4,) * 3, std=(0.2,) * 3, methods=("attention", "gradcam"),
                          show=1)
    assert result["sources"] == ["attention/conv10", "attention/conv13", "gradcam/conv13"]
    head = result["cascading"][0]
    assert head["stage"] == "head"
    # attention is computed before the classifier: a random head leaves it exactly as it was
    assert head["similarity"]["attention/conv10"]["spearman"]["mean"] == pytest.approx(1.0)
    assert head["similarity"]["attention/conv10"]["ssim"]["mean"] == pytest.approx(1.0)
    assert [s["stage"] for s in result["independent"]] == [s["stage"] for s in result["cascading"]]
    assert result["gallery"]["maps"]["gradcam/conv13"].shape == (1 + len(result["cascading"]), 1, 32, 32)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
    written = write_sanity_report(result, tmp_path)
    saved = json.loads(written["json"].read_text())
    assert "gallery" not in saved and saved["verdict"].keys() == result["verdict"].keys()
    assert written["figure"].stat().st_size > 10_000 and "Adebayo" in written["text"].read_text()


def test_bad_arguments_are_refused_before_any_work():
    model = _trained_like("vgg_att1")
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at least 2 images"):
        sanity_check(model, images, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match="modes"):
        sanity_check(model, images, mean=(0.5,) * 3, std=(0.5,) * 3, modes=("sideways",))
    with pytest.raises(ValueError, match="unknown method"):
        sanity_check(model, images, mean=(0.5,) * 3, std=(0.5,) * 3, methods=("rise",))
    with pytest.raises(ValueError, match="init"):
        randomised_copy(model, parameter_groups(model)[:1], init="zeros")
