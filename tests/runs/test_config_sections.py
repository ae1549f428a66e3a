"""Config sections: every key belongs to one (model, data, optimisation, run); "what may change
on resume" is the run section plus epochs; --set takes flat and section.key forms; the grouped
and the old flat config.json both load."""
import dataclasses
import json

import pytest

from ltpa.runs.config import RESUMABLE_CHANGES, SECTIONS, TrainConfig, apply_overrides
from ltpa.runs.run import Run


def test_every_key_has_a_section_and_resume_may_change_the_run_section_and_epochs():
    sections = {f.name: f.metadata.get("section") for f in dataclasses.fields(TrainConfig)}
    assert set(sections.values()) == set(SECTIONS)
    assert set(RESUMABLE_CHANGES) == {k for k, s in sections.items() if s == "run"} | {"epochs"}
    assert {"lr", "seed", "batch_size"} <= {k for k, s in sections.items() if s == "optimisation"}
    assert {"device", "precision", "keep_last", "checkpoint_every_steps"} <= set(RESUMABLE_CHANGES)
    assert TrainConfig.section_of("num_classes") == "model" and TrainConfig.section_of("zca") == "data"


def test_a_decaying_schedule_keeps_its_epochs_on_resume():
    from ltpa.runs.config import resume_config

    step = TrainConfig(epochs=3)
    assert resume_config(step, dataclasses.replace(step, epochs=6)).epochs == 6  # the paper's step schedule extends
    for schedule in ("cosine", "linear"):
        saved = TrainConfig(epochs=3, lr_schedule=schedule)
        assert resume_config(saved, dataclasses.replace(saved, device="cpu")).epochs == 3
        with pytest.raises(ValueError, match=f"epochs: run has 3, given 6 \\(lr_schedule='{schedule}' decays"):
            resume_config(saved, dataclasses.replace(saved, epochs=6))


def test_a_run_keeps_its_optimizer_on_resume_and_old_configs_read_as_sgd():
    from ltpa.runs.config import resume_config

    saved = TrainConfig(optimizer="adamw", lr=1e-3)
    with pytest.raises(ValueError, match="optimizer: run has 'adamw', given 'sgd'"):
        resume_config(saved, dataclasses.replace(saved, optimizer="sgd"))
    before_the_option = {k: v for k, v in TrainConfig().to_dict().items() if k != "optimizer"}
    assert TrainConfig.from_dict(before_the_option).optimizer == "sgd"


def test_grouped_and_flat_dicts_load_the_same_config():
    config = TrainConfig(lr=0.3, model_options={"width": 0.5}, mean=(0.1, 0.2, 0.3), device="cpu")
    grouped = config.to_dict(grouped=True)
    assert list(grouped) == ["model", "data", "optimisation", "run"]
    assert grouped["optimisation"]["lr"] == 0.3 and grouped["model"]["model"] == "vgg_att3"
    assert TrainConfig.from_dict(grouped) == TrainConfig.from_dict(config.to_dict()) == config
    wrong = {**grouped, "run": {**grouped["run"], "lr": 0.5}}
    with pytest.raises(ValueError, match="'lr' belongs to section 'optimisation', not 'run'"):
        TrainConfig.from_dict(wrong)


@pytest.mark.parametrize("item, key, value", [
    ("optimisation.lr=0.05", "lr", 0.05), ("lr=0.05", "lr", 0.05),
    ("model.num_classes=4", "num_classes", 4), ("run.device=cpu", "device", "cpu"),
    ("data.mean=0.5,0.5,0.5", "mean", (0.5, 0.5, 0.5)), ("model=vgg", "model", "vgg"),
])
def test_set_accepts_flat_and_section_keys(item, key, value):
    assert getattr(apply_overrides(TrainConfig(), [item]), key) == value


def test_set_names_the_section_keys_when_a_key_is_in_another_section():
    assert apply_overrides(TrainConfig(), ["model_options.width=0.25"]).model_options == {"width": 0.25}
    with pytest.raises(ValueError, match="section 'run' has no key 'lr'; its keys are .*device"):
        apply_overrides(TrainConfig(), ["run.lr=0.5"])


@pytest.mark.parametrize("grouped", [False, True])
def test_a_run_folder_opens_with_a_flat_or_grouped_config_json(tmp_path, grouped):
    """Runs written before sections existed have a flat config.json; both forms open."""
    config = TrainConfig(num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict(grouped=grouped)))
    run = Run.open(tmp_path)
    assert run.config == config and run.checkpoint is None
