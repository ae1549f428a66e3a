"""Source loading: ltpa checkpoints, safetensors, foreign .pt files (SaoYan layout), refusals."""
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ltpa.models import create_model
from ltpa.runs.checkpoints import CheckpointError, save_checkpoint
from ltpa.transfer import load_source_state, map_foreign_state, transfer_weights

WIDTH = 0.125


def _w(channels):
    return max(1, int(round(channels * WIDTH)))


class _Block(nn.Module):
    """SaoYan-style conv block: ``op`` = [Conv2d, BatchNorm2d, ReLU(, MaxPool2d)] per conv."""

    def __init__(self, cin, cout, n, pool=False, bias=True):
        super().__init__()
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=bias),
                       nn.BatchNorm2d(cout), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
        self.op = nn.Sequential(*layers)


class _Op(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.op = nn.Conv2d(cin, cout, 1, bias=False)


class SaoYanLike(nn.Module):
    """Same module names and shapes as SaoYan's AttnVGG_before/after (scaled by WIDTH)."""

    def __init__(self, num_classes=10, im_size=32, six_blocks=True, bias=True):
        super().__init__()
        self.conv_block1 = _Block(3, _w(64), 2, bias=bias)
        self.conv_block2 = _Block(_w(64), _w(128), 2, bias=bias)
        self.conv_block3 = _Block(_w(128), _w(256), 3, bias=bias)
        self.conv_block4 = _Block(_w(256), _w(512), 3, bias=bias)
        self.conv_block5 = _Block(_w(512), _w(512), 3, bias=bias)
        if six_blocks:
            self.conv_block6 = _Block(_w(512), _w(512), 2, pool=True, bias=bias)
        self.dense = nn.Conv2d(_w(512), _w(512), im_size // 32, bias=True)
        self.projector = _Op(_w(256), _w(512))
        self.attn1, self.attn2, self.attn3 = (_Op(_w(512), 1) for _ in range(3))
        self.classify = nn.Linear(_w(512) * 3, num_classes)


def _ltpa_closest(name="vgg_att3", **options):
    return create_model(name, num_classes=10, width=WIDTH, channel_match="project_l",
                        dropout=False, **options)


def test_saoyan_names_map_onto_vgg_att3_project_l():
    net = SaoYanLike()
    source = net.state_dict()
    mapped, unmapped, fmt = map_foreign_state(source)
    assert fmt == "saoyan" and unmapped == {}
    own = _ltpa_closest().state_dict()
    assert set(mapped) <= set(own)
    assert all(mapped[k].shape == own[k].shape for k in mapped)
    assert set(own) - set(mapped) == {k for k in own if k.startswith("head.norms.")}
    assert torch.equal(mapped["trunk.conv3.conv.weight"], source["conv_block2.op.0.weight"])
    assert torch.equal(mapped["trunk.conv14.bn.running_var"], source["conv_block6.op.1.running_var"])
    assert torch.equal(mapped["trunk.conv15.conv.bias"], source["conv_block6.op.4.bias"])
    assert torch.equal(mapped["global.fc.weight"], source["dense.weight"].flatten(1))
    assert torch.equal(mapped["attention.0.proj.weight"], source["projector.op.weight"])
    assert torch.equal(mapped["attention.2.compat.weight"], source["attn3.op.weight"])


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_saoyan_pt_file_with_wrapper_prefixes_transfers(tmp_path, prefix):
    net = SaoYanLike()
    path = tmp_path / "net.pth"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    state = load_source_state(path)
    assert state.format == "saoyan" and state.notes
    model = _ltpa_closest()
    report = transfer_weights(model, state, "*")
    assert report.counts["shape_mismatch"] == 0 and report.counts["unused_source"] == 0
    assert set(report.names("reinitialised")) == {k for k in model.state_dict() if k.startswith("head.norms.")}
    assert torch.equal(model.trunk.conv1.conv.weight, net.conv_block1.op[0].weight)
    assert "saoyan" in report.format() and "note: saoyan" in report.format()


def test_saoyan_into_att2_places_attention_by_level_and_reports_the_rest(tmp_path):
    net = SaoYanLike()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    model = _ltpa_closest("vgg_att2")  # levels conv10, conv13
    report = transfer_weights(model, load_source_state(tmp_path / "net.pt"), "all-but-head")
    assert torch.equal(model.attention["0"].compat.weight, net.attn2.op.weight)
    assert torch.equal(model.attention["1"].compat.weight, net.attn3.op.weight)
    unused = {e.name: e.note for e in report.by_status("unused_source")}
    assert set(unused) == {"attn1.op.weight", "projector.op.weight"}
    assert "conv7" in unused["attn1.op.weight"]


def test_larger_dense_kernel_and_thirteen_conv_layout_are_reported_not_forced():
    net = SaoYanLike(im_size=64, six_blocks=False, bias=False)
    mapped, unmapped, fmt = map_foreign_state(net.state_dict())
    assert fmt == "saoyan" and "dense.weight" in unmapped and "global.fc.weight" not in mapped
    report = transfer_weights(_ltpa_closest(), net.state_dict(), "trunk")
    reinit = set(report.names("reinitialised"))
    assert {"trunk.conv14.conv.weight", "trunk.conv15.bn.running_mean", "trunk.conv1.conv.bias"} <= reinit
    assert "trunk.conv13.conv.weight" in report.names("loaded")


def test_a_pickle_needing_arbitrary_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save({"model": _Unsafe(), "weights": torch.zeros(2)}, path)
    _Unsafe.unpickled = False
    with pytest.raises(CheckpointError, match="weights_only") as err:
        load_source_state(path)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert not _Unsafe.unpickled


class _Unsafe:
    unpickled = False

    def __reduce__(self):
        return (_mark_unpickled, ())


def _mark_unpickled():
    _Unsafe.unpickled = True
    return _Unsafe()


def test_nested_training_checkpoint_and_unknown_layouts(tmp_path):
    model = create_model("vgg_att1", num_classes=10, width=WIDTH)
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    assert load_source_state(tmp_path / "ckpt.pth").format == "ltpa"
    torch.save({"fc1.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unrecognised layout"):
        load_source_state(tmp_path / "other.pt")
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="without a state dict"):
        load_source_state(tmp_path / "meta.pt")
    with pytest.raises(FileNotFoundError):
        load_source_state(tmp_path / "missing.pt")


def test_ltpa_checkpoint_by_sidecar_weights_or_stem_and_plain_safetensors(tmp_path):
    model = create_model("vgg_att1", num_classes=10, width=WIDTH)
    sidecar = save_checkpoint(tmp_path, "best", model=model, config={}, epoch=1, step=1, rng=False)
    for path in (sidecar, tmp_path / "best.safetensors", tmp_path / "best", tmp_path):
        if path == tmp_path:
            continue  # "best" is not an epoch checkpoint, so the directory form does not apply
        state = load_source_state(path)
        assert state.format == "ltpa" and set(state) == set(model.state_dict())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "plain.safetensors")
    plain = load_source_state(tmp_path / "plain.safetensors")
    assert torch.equal(plain["global.fc.weight"], model.global_branch.fc.weight.detach())
