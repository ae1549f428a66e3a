"""The CPU presets: one shrunk recipe for att3, att2 (the CUB source), the ablation and VGG."""
import dataclasses

import pytest

import ltpa
from ltpa.train.presets import get_preset

CPU = {"cifar100-vgg-att3-cpu": "vgg_att3", "cifar100-vgg-att2-cpu": "vgg_att2",
       "cifar100-vgg-noatt-cpu": "vgg_noatt", "cifar100-vgg-cpu": "vgg"}


@pytest.mark.parametrize("name", sorted(CPU))
def test_cpu_presets_share_one_recipe_and_differ_only_in_the_model(name):
    config = get_preset(name)
    reference = get_preset("cifar100-vgg-att3-cpu")
    assert config.model == CPU[name]
    changed = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(reference, f.name)}
    assert changed <= {"model", "model_options"}
    # small width and little data: dropout off; attention models keep PyTorch's init of u
    assert config.model_options["width"] == 0.25 and config.model_options["dropout"] is False
    assert config.model_options.get("compat_init") == ("default" if CPU[name].startswith("vgg_att") else None)
    assert (config.subset_train, config.val_fraction, config.epochs, config.warmup_epochs) == (10000, 0.1, 30, 0.5)
    # the measured short-budget schedule (README, "CPU presets, time to accuracy")
    assert (config.lr_schedule, config.label_smoothing, config.lr) == ("cosine", 0.1, 0.05)
    ltpa.create_model(config.model, num_classes=config.num_classes, **config.model_options)  # options valid


def test_paper_presets_stay_faithful():
    config = get_preset("cifar100-vgg-att3")
    assert config.model_options == {} and (config.epochs, config.lr, config.batch_size) == (300, 0.1, 128)
