"""param_groups: freezing by pattern, first-match lr multipliers, each parameter exactly once."""
import pytest
import torch

from ltpa.models import create_model
from ltpa.transfer import param_groups


def _model():
    return create_model("vgg_att2", num_classes=10, width=0.125)


def test_frozen_parameters_are_excluded_and_stop_requiring_grad():
    model = _model()
    groups = param_groups(model, freeze="trunk.conv1-7", base_lr=0.1)
    grouped = {name for g in groups for name in g["param_names"]}
    for name, param in model.named_parameters():
        frozen = any(name.startswith(f"trunk.conv{i}.") for i in range(1, 8))
        assert param.requires_grad is not frozen, name
        assert (name in grouped) is not frozen, name


def test_first_matching_multiplier_wins_and_each_parameter_appears_once():
    model = _model()
    groups = param_groups(model, base_lr=0.1, freeze=["trunk.conv1"],
                          lr_multipliers={"trunk.conv2-7": 0.01, "trunk": 0.1, "head.classifier": 10})
    by_name = {g["name"]: g for g in groups}
    assert by_name["trunk.conv2-7"]["lr"] == pytest.approx(0.001)
    assert by_name["trunk"]["lr"] == pytest.approx(0.01)
    assert by_name["head.classifier"]["lr"] == pytest.approx(1.0)
    assert by_name["default"]["lr"] == pytest.approx(0.1)
    assert "trunk.conv3.conv.weight" in by_name["trunk.conv2-7"]["param_names"]
    assert "trunk.conv8.conv.weight" in by_name["trunk"]["param_names"]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]


def test_unknown_patterns_and_bad_multipliers_are_errors():
    model = _model()
    with pytest.raises(ValueError, match="trunk, global, attention, head"):
        param_groups(model, freeze=["backbone.*"], base_lr=0.1)
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen on error
    with pytest.raises(ValueError, match=">= 0"):
        param_groups(model, lr_multipliers={"trunk": -1.0}, base_lr=0.1)
    with pytest.raises(ValueError, match="base_lr"):
        param_groups(model, base_lr=0.0)
