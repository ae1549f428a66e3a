"""Pattern resolution and transfer_weights: every report status, BN buffers, shape policies."""
import json
import logging

import pytest
import torch

from ltpa.models import create_model
from ltpa.runs.checkpoints import CheckpointError
from ltpa.transfer import (
    STATUSES, TRANSFER_PRESETS, PatternSet, TransferReport, resolve_patterns, transfer_weights,
)

WIDTH = 0.125  # 8..64 channels: fast on CPU, same names as the paper's models


def _model(name="vgg_att2", num_classes=10, **options):
    return create_model(name, num_classes=num_classes, width=WIDTH, **options)


def _randomised(model):
    """A state dict whose every float tensor differs from any fresh init (and BN stats too)."""
    state = model.state_dict()
    gen = torch.Generator().manual_seed(0)
    return {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 7)
            for k, v in state.items()}


def test_presets_expand_and_commas_split():
    assert resolve_patterns(["all-but-head"]) == TRANSFER_PRESETS["all-but-head"]
    assert resolve_patterns("trunk+global") == ["trunk", "global"]
    assert resolve_patterns("trunk, global,!trunk.conv1") == ["trunk", "global", "!trunk.conv1"]
    assert resolve_patterns(["trunk", "trunk+global"]) == ["trunk", "global"]  # no duplicates
    assert set(TRANSFER_PRESETS) == {"trunk", "trunk+global", "trunk+global+attention", "all-but-head"}


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ValueError, match="trunk\\+global"):
        resolve_patterns(["trunk+globl"])
    with pytest.raises(ValueError, match="empty pattern"):
        resolve_patterns(["trunk", " "])


def test_range_expands_to_exact_layers():
    patterns = PatternSet("trunk.conv2-4")
    assert patterns.matches("trunk.conv2.conv.weight") and patterns.matches("trunk.conv4.bn.bias")
    assert not patterns.matches("trunk.conv1.conv.weight")
    assert not patterns.matches("trunk.conv5.conv.weight")
    assert not patterns.matches("trunk.conv20.conv.weight")
    with pytest.raises(ValueError, match="must ascend"):
        resolve_patterns("trunk.conv7-1")


def test_module_prefix_stops_at_a_dot():
    patterns = PatternSet("trunk.conv1")
    assert patterns.matches("trunk.conv1.conv.weight")
    assert not patterns.matches("trunk.conv10.conv.weight")


def test_exclusions_win_in_any_order_and_alone_start_from_everything():
    assert not PatternSet(["!trunk.conv1", "trunk"]).matches("trunk.conv1.bn.weight")
    alone = PatternSet(["!head"])
    assert alone.matches("global.fc.weight") and not alone.matches("head.norms.0.weight")


def test_cifar100_att2_to_cub_att2_loads_all_but_the_classifier():
    source = _model(num_classes=100)
    target = _model(num_classes=200, input_size=80)
    assert target.options["first_pool"] == 5  # no parameters: conv weights keep their shapes
    state = _randomised(source)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, state, resolve_patterns(["all-but-head"]))
    skipped = report.names("skipped")
    assert skipped == ["head.classifier.weight", "head.classifier.bias"]
    assert report.counts == {"loaded": len(fresh) - 2, "skipped": 2, "reinitialised": 0,
                             "shape_mismatch": 0, "unused_source": 0}
    after = target.state_dict()
    for name in fresh:
        expected = fresh[name] if name in skipped else state[name]
        assert torch.equal(after[name], expected), name
    out = target(torch.randn(2, 3, 80, 80))
    assert out.logits.shape == (2, 200)


def test_star_records_the_classifier_as_shape_mismatch_and_keeps_it_fresh(caplog):
    source, target = _model(num_classes=100), _model(num_classes=200)
    fresh = target.head.classifier.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="ltpa.transfer.select"):
        report = transfer_weights(target, _randomised(source), "*")
    bad = report.by_status("shape_mismatch")
    assert [e.name for e in bad] == ["head.classifier.weight", "head.classifier.bias"]
    assert bad[0].model_shape == (200, 128) and bad[0].source_shape == (100, 128)
    assert torch.equal(target.head.classifier.weight, fresh)
    assert "head.classifier.weight" in caplog.text and "(100, 128)" in caplog.text
    assert "model (200, 128) vs source (100, 128)" in report.format()


def test_strict_shapes_raises_and_leaves_the_model_untouched():
    source, target = _model(num_classes=100), _model(num_classes=200)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"head.classifier.weight: source \(100, 128\) vs model \(200, 128\)"):
        transfer_weights(target, _randomised(source), "*", strict_shapes=True)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_every_status_appears_in_one_report(tmp_path):
    source, target = _model(num_classes=100), _model(num_classes=200)
    state = _randomised(source)
    del state["global.fc.bias"]
    state["extra.layer.weight"] = torch.zeros(3)
    report = transfer_weights(target, state, ["trunk", "global", "head", "!head.norms"])
    assert all(report.counts[s] > 0 for s in STATUSES), report.counts
    assert report.names("reinitialised") == ["global.fc.bias"]
    assert report.names("unused_source") == ["extra.layer.weight"]
    assert set(report.names("skipped")) == {k for k in target.state_dict()
                                            if k.startswith(("attention.", "head.norms."))}
    assert sum(report.counts.values()) == len(target.state_dict()) + 1
    text = report.format()
    for group in ("trunk", "global", "attention", "head", "extra", "total"):
        assert f"\n{group}" in text
    saved = json.loads(report.save(tmp_path / "transfer.json").read_text())
    assert saved["counts"] == report.counts and len(saved["entries"]) == len(report.entries)
    assert isinstance(report, TransferReport)


def test_batchnorm_buffers_follow_their_layer_weight():
    source, target = _model(), _model()
    state = _randomised(source)
    report = transfer_weights(target, state, ["*.weight"])
    status = {e.name: e.status for e in report.entries}
    for leaf in ("weight", "running_mean", "running_var", "num_batches_tracked"):
        assert status[f"trunk.conv3.bn.{leaf}"] == "loaded"
    assert status["trunk.conv3.bn.bias"] == "skipped" and status["trunk.conv3.conv.bias"] == "skipped"
    assert torch.equal(target.trunk.conv3.bn.running_var, state["trunk.conv3.bn.running_var"])
    assert int(target.trunk.conv3.bn.num_batches_tracked) == 7


def test_a_pattern_matching_nothing_is_an_error_that_lists_groups():
    with pytest.raises(ValueError) as err:
        transfer_weights(_model(), _randomised(_model()), ["trnk.conv1-7"])
    message = str(err.value)
    assert "'trnk.conv1-7'" in message and "trunk, global, attention, head" in message
    assert "trunk.conv1.conv.weight" in message


def test_wrapped_source_and_wrapped_model_are_unwrapped():
    source, target = _model(), _model()
    state = {f"module._orig_mod.{k}": v for k, v in _randomised(source).items()}
    report = transfer_weights(torch.nn.DataParallel(target), state, "trunk+global+attention")
    assert report.counts["unused_source"] == 0
    assert torch.equal(target.global_branch.fc.weight, state["module._orig_mod.global.fc.weight"])


def test_attention_moves_by_level_when_the_source_checkpoint_names_its_model(tmp_path):
    from ltpa.runs.checkpoints import save_checkpoint
    from ltpa.transfer import load_source_state

    options = {"width": WIDTH, "channel_match": "project_l"}
    source = create_model("vgg_att3", num_classes=100, **options)  # levels conv7, conv10, conv13
    sidecar = save_checkpoint(tmp_path, "best", model=source, rng=False, epoch=1, step=1,
                              config={"model": "vgg_att3", "model_options": options, "num_classes": 100})
    target = create_model("vgg_att2", num_classes=200, **options)  # levels conv10, conv13
    state = load_source_state(sidecar)
    assert state.levels == ("conv7", "conv10", "conv13")
    report = transfer_weights(target, state, "all-but-head")
    assert torch.equal(target.attention["0"].compat.weight, source.attention["1"].compat.weight)
    assert torch.equal(target.head.norms[1].running_var, source.head.norms[2].running_var)
    unused = {e.name: e.note for e in report.by_status("unused_source")}
    assert set(unused) == {"attention.0.proj.weight", "attention.0.compat.weight"} | {
        f"head.norms.0.{leaf}" for leaf in ("weight", "bias", "running_mean", "running_var",
                                             "num_batches_tracked")}
    assert "conv7 is not attended" in unused["attention.0.compat.weight"]


def test_a_bare_state_with_other_levels_gets_an_index_matching_note():
    source = create_model("vgg_att3", num_classes=10, width=WIDTH, channel_match="project_l")
    target = create_model("vgg_att2", num_classes=10, width=WIDTH, channel_match="project_l")
    report = transfer_weights(target, source.state_dict(), "trunk+global+attention")
    assert any("matched by index" in note for note in report.notes)
    assert "note: source has 3 attention level(s)" in report.format()
