import json

import pytest
import torch

from ltpa.train import TrainConfig, apply_overrides
from ltpa.train.precision import resolve_precision


def test_round_trip_through_json_is_identical():
    config = TrainConfig(model_options={"width": 0.25, "compat": "dp"}, lr_milestones=(60, 120),
                         mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), channels_last=False)
    data = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(data) == config


def test_from_dict_names_unknown_keys_and_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown TrainConfig key\(s\) \['lerning_rate'\]") as err:
        TrainConfig.from_dict({"lerning_rate": 0.1})
    assert "Valid keys:" in str(err.value)
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})


def test_from_dict_rejects_wrong_types():
    with pytest.raises(ValueError, match="'epochs' got '3'"):
        TrainConfig.from_dict({"epochs": "3"})
    with pytest.raises(ValueError, match="nesterov"):
        TrainConfig.from_dict({"nesterov": 1})


def test_overrides_parse_each_field_type():
    config = apply_overrides(TrainConfig(), [
        "epochs=7", "lr=1e-2", "nesterov=true", "model=vgg_att2", "lr_milestones=60,120,160",
        "lr_milestone_gammas=[0.2, 0.2, 0.2]", "mean=0.5,0.5,0.5", "std=none",
        "channels_last=false", "precision=bf16", "warmup_epochs=2",
    ])
    assert config.epochs == 7 and isinstance(config.epochs, int)
    assert config.lr == 0.01 and isinstance(config.lr, float)
    assert config.nesterov is True
    assert config.model == "vgg_att2"
    assert config.lr_milestones == (60, 120, 160)
    assert config.lr_milestone_gammas == (0.2, 0.2, 0.2)
    assert config.mean == (0.5, 0.5, 0.5) and config.std is None
    assert config.channels_last is False
    assert apply_overrides(config, ["channels_last=auto"]).channels_last == "auto"
    assert config.warmup_epochs == 2.0 and isinstance(config.warmup_epochs, float)


def test_overrides_set_nested_model_options_and_whole_dicts():
    config = apply_overrides(TrainConfig(), ["model_options.width=0.25", "model_options.compat=dp",
                                             "model_options.grad_average=true"])
    assert config.model_options == {"width": 0.25, "compat": "dp", "grad_average": True}
    config = apply_overrides(config, ['model_options={"head": "indep"}'])
    assert config.model_options == {"head": "indep"}


def test_overrides_leave_the_input_unchanged():
    config = TrainConfig()
    apply_overrides(config, ["epochs=1", "model_options.width=0.5"])
    assert config.epochs == TrainConfig().epochs and config.model_options == {}


@pytest.mark.parametrize("override, expected", [
    ("epochs=three", r"cannot set epochs='three': expected int"),
    ("lr=fast", r"cannot set lr='fast': expected float"),
    ("lr=nan", r"expected float \(a finite number\)"),
    ("nesterov=maybe", r"expected bool \(true/false\)"),
    ("lr_milestones=60,x", r"lr_milestones"),
    ("model_options=[1]", r"expected dict"),
    ("epochs", r"not of the form key=value"),
    ("lr.x=1", r"'lr' is a float, not a dict"),
])
def test_overrides_reject_bad_values_with_the_key_value_and_type(override, expected):
    with pytest.raises(ValueError, match=expected):
        apply_overrides(TrainConfig(), [override])


def test_unknown_override_key_suggests_the_closest_and_lists_valid_keys():
    with pytest.raises(ValueError) as err:
        apply_overrides(TrainConfig(), ["batchsize=64"])
    message = str(err.value)
    assert "unknown config key 'batchsize'" in message
    assert "Did you mean 'batch_size'?" in message
    assert "Valid keys:" in message and "weight_decay" in message


@pytest.mark.parametrize("changes, key", [
    ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"precision": "fp8"}, "precision"), ({"channels_last": "yes"}, "channels_last"),
    ({"lr_milestones": (120, 60)}, "lr_milestones"), ({"std": (0.1, 0.0, 0.1)}, "std"),
    ({"val_fraction": 0.0, "test_weights": "best"}, "test_weights"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"optimizer": "adamw", "nesterov": True}, "nesterov"),
    ({"optimizer": "adamw", "dampening": 0.9}, "dampening"),
])
def test_validate_names_the_bad_key(changes, key):
    with pytest.raises(ValueError, match=f"config {key}="):
        TrainConfig(**changes).validate()


def test_precision_fp32_on_cpu_disables_autocast_and_scaler():
    choice = resolve_precision("fp32", False, "cpu")
    assert not choice.amp_enabled and not choice.grad_scaler().is_enabled()
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", "auto", "cpu")
    assert resolve_precision("auto", "auto", "cpu").name in ("bf16", "fp32")


def test_make_optimizer_builds_sgd_or_adamw_from_the_config():
    from ltpa.train.run_setup import make_optimizer

    groups = lambda: [{"params": [torch.nn.Parameter(torch.zeros(2))]}]  # noqa: E731
    sgd = make_optimizer(groups(), TrainConfig(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-4))
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"] and sgd.defaults["lr"] == 0.05
    adamw = make_optimizer(groups(), TrainConfig(optimizer="adamw", lr=1e-3, momentum=0.85, weight_decay=0.05))
    assert type(adamw) is torch.optim.AdamW
    assert adamw.defaults["betas"] == (0.85, 0.999) and adamw.defaults["weight_decay"] == 0.05
    assert adamw.defaults["lr"] == 1e-3


def test_unusual_settings_judge_lr_and_weight_decay_by_the_optimizer():
    from ltpa.train.failures import unusual_settings

    assert unusual_settings(TrainConfig(lr=0.05, weight_decay=5e-4)) == []
    assert unusual_settings(TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05)) == []
    flagged = unusual_settings(TrainConfig(optimizer="adamw", lr=0.05, weight_decay=0.5))
    assert [item.split("=")[0] for item in flagged] == ["lr", "weight_decay"]
    assert "AdamW" in flagged[0]
    assert unusual_settings(TrainConfig(weight_decay=0.05)) == ["weight_decay=0.05 (usually 5e-4)"]


def test_divergence_hints_suit_the_optimizer_and_never_raise_the_lr():
    from ltpa.train.failures import diverged

    def hint(**changes) -> str:
        return str(diverged(float("nan"), "in epoch 1", TrainConfig(**changes)))

    assert "set lr=0.01 " in hint(lr=0.05) and "grad_average" in hint(lr=0.05)
    assert "set lr=0.0003 " in hint(optimizer="adamw", lr=1e-3, weight_decay=0.05)
    adamw = hint(optimizer="adamw", lr=1e-4, weight_decay=0.05)
    assert "set lr=1e-05 " in adamw and "grad_average" not in adamw  # an SGD recipe's remedy
    assert "set lr=0.0005 " in hint(lr=0.005)


def test_adamw_with_an_sgd_lr_is_warned_about_before_the_run(caplog):
    from ltpa.train.run_plan import _warn_sgd_values_with_adamw

    with caplog.at_level("WARNING", logger="ltpa"):
        _warn_sgd_values_with_adamw(TrainConfig(optimizer="adamw", lr=0.02))
        _warn_sgd_values_with_adamw(TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05))
        _warn_sgd_values_with_adamw(TrainConfig(lr=0.02))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["optimizer=adamw with lr=0.02 (AdamW usually trains with 1e-4 to 3e-3)"]
