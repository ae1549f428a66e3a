"""timm_att: levels from timm's feature_info, traced geometry, local weights, no hidden downloads."""
import copy

import pytest
import torch
from torch import nn

import ltpa

timm = pytest.importorskip("timm")


def _images(size, batch=2, seed=0):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_levels_by_index_or_module_name_agree_with_feature_info():
    by_index = ltpa.create_model("timm_att", num_classes=4, backbone="test_resnet", levels=(2, 3))
    by_name = ltpa.create_model("timm_att", num_classes=4, backbone="test_resnet", levels=("layer2", "layer3"))
    assert by_index.levels == by_name.levels
    info = timm.create_model("test_resnet", features_only=True).feature_info.info
    assert [(lv.name, lv.channels, lv.stride) for lv in by_index.levels] == [
        (info[i]["module"], info[i]["num_chs"], float(info[i]["reduction"])) for i in (2, 3)]
    features = by_index.forward_features(_images(64))
    assert list(features) == ["layer2", "layer3", "global"]
    assert features["global"].shape == (2, info[3]["num_chs"])  # g_dim: the last level's width
    assert "attention.g48.fc.weight" in by_index.state_dict()  # layer2 (48) is narrower than g


@pytest.mark.parametrize("backbone, levels", [("test_resnet", (1, 2, 3)), ("convnext_atto", (0, 1, 2))])
@pytest.mark.parametrize("size", [64, (50, 70)], ids=str)
def test_maps_have_the_feature_map_shapes(backbone, levels, size):
    model = ltpa.create_model("timm_att", num_classes=3, backbone=backbone, levels=levels, input_size=size)
    images = _images(size)
    features = model.forward_features(images)
    out = model.forward_head(features)
    for attn, level in zip(out.maps, out.levels):
        assert attn.shape == (2, 1, *features[level.name].shape[2:])
        torch.testing.assert_close(attn.sum(dim=(2, 3)), torch.ones(2, 1))
        h, w = attn.shape[2:]
        # timm's ResNets round map sizes up, ConvNeXt's patchify stem rounds down
        assert h in (images.shape[2] // int(level.stride), -(-images.shape[2] // int(level.stride)))
        assert w in (images.shape[3] // int(level.stride), -(-images.shape[3] // int(level.stride)))


def _linearised(trunk):
    """Swap ReLU/GELU for Identity and max-pools for average pools: the receptive field stays, and
    every input pixel in it gets a non-zero gradient (no dead units, no unselected pool inputs).
    timm zero-initialises each residual block's last BN; unit scales make every branch count.
    Squeeze-excitation gates see the whole image through a global pool: they go too."""
    trunk = copy.deepcopy(trunk).eval()
    for name, module in list(trunk.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
        parent = trunk.get_submodule(name.rpartition(".")[0]) if "." in name else trunk
        child = name.rpartition(".")[2]
        if isinstance(module, (nn.ReLU, nn.GELU, nn.SiLU)) or "SqueezeExcite" in type(module).__name__:
            setattr(parent, child, nn.Identity())
        elif isinstance(module, nn.MaxPool2d):
            setattr(parent, child, nn.AvgPool2d(module.kernel_size, module.stride, module.padding))
    return trunk


@pytest.mark.parametrize("backbone, levels, size, offsets", [
    ("resnet18", (1, 2), 128, (0.5, 0.5)),  # 7x7/2 pad 3 and 3x3/2 pad 1 layers centre output j on 2j
    ("test_resnet", (1, 2, 3), 256, (0.5, 0.5, 0.5)),
    ("convnext_atto", (0, 1), 192, (2.0, 4.0)),  # patchify stem and 2x2 downsampling: stride / 2
    ("tf_efficientnet_b0", (1,), 96, (3.5,)),  # TF-"same" padding puts the extra pixel right/bottom
])
def test_traced_offsets_match_a_receptive_field_probe(backbone, levels, size, offsets):
    model = ltpa.create_model("timm_att", num_classes=3, backbone=backbone, levels=levels, input_size=size)
    assert tuple(lv.offset for lv in model.levels) == offsets
    trunk = _linearised(model.trunk)
    for level, index in zip(model.levels, levels):
        images = _images(size, batch=1).requires_grad_(True)
        local = trunk(images)[model._positions[index]]  # (1, C, h, w)
        jy, jx = local.shape[2] // 2, local.shape[3] // 2 - 1
        local[0, :, jy, jx].sum().backward()
        grad = images.grad[0].abs().sum(0)  # (H, W)
        for axis, j in ((0, jy), (1, jx)):
            hits = grad.sum(dim=1 - axis).nonzero().flatten()
            first, last = hits.min().item(), hits.max().item()
            assert 0 < first and last < size - 1, "receptive field clipped: use a larger probe"
            assert (first + last + 1) / 2 == level.offset + j * level.stride, (level, axis)


def test_state_dict_names_use_the_shared_groups():
    model = ltpa.create_model("timm_att", num_classes=5, backbone="test_resnet")
    names = list(model.state_dict())
    assert {n.split(".")[0] for n in names} == {"trunk", "global", "attention", "head"}
    trunk_names = set(timm.create_model("test_resnet", features_only=True).state_dict())
    assert {n[len("trunk."):] for n in names if n.startswith("trunk.")} == trunk_names
    for expected in ["global.fc.weight", "attention.0.compat.weight", "head.classifier.weight"]:
        assert expected in names


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_loads_into_the_backbone(tmp_path, suffix):
    source = timm.create_model("test_resnet")
    path = tmp_path / f"test_resnet{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)  # a training-checkpoint wrapper
    model = ltpa.create_model("timm_att", num_classes=3, backbone="test_resnet", pretrained=True, weights=path)
    loaded = model.trunk.state_dict()
    expected = source.state_dict()
    assert loaded and all(torch.equal(v, expected[k]) for k, v in loaded.items())
    assert "state_dict" not in getattr(model.trunk, "pretrained_cfg", {})
    assert model.options["weights"] == str(path)


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    wrong = tmp_path / "convnext.pth"
    torch.save(timm.create_model("convnext_atto").state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit timm backbone 'test_resnet'.*unexpected keys"):
        ltpa.create_model("timm_att", backbone="test_resnet", weights=wrong)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ltpa.create_model("timm_att", backbone="test_resnet", weights=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read weights file"):
        ltpa.create_model("timm_att", backbone="test_resnet", weights=garbage)


@pytest.fixture
def offline_hub(monkeypatch):
    """timm's hub and URL loaders fail as they would offline, and record that they were asked."""
    from timm.models import _builder
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network is unreachable")

    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(_builder, name, refuse)
    return calls


def test_pretrained_true_without_a_file_never_touches_the_hub(offline_hub):
    with pytest.raises(ValueError, match=r"pass weights=PATH with") as info:
        ltpa.create_model("timm_att", backbone="test_resnet", pretrained=True)
    assert "pass --weights PATH with" in info.value.render(cli=True)  # what `ltpa train` prints
    assert offline_hub == []


def test_download_offline_says_to_pass_a_weights_file(offline_hub):
    with pytest.raises(RuntimeError, match="--weights PATH"):
        ltpa.create_model("timm_att", backbone="test_resnet", pretrained="download")
    assert offline_hub, "the test must exercise timm's hub loader"


def test_bad_backbone_levels_and_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        ltpa.create_model("timm_att", backbone="resnet_18")
    with pytest.raises(ValueError, match="0='act1'.*4='layer4'"):
        ltpa.create_model("timm_att", backbone="test_resnet", levels=(7,))
    with pytest.raises(ValueError, match="'layer9' is not a feature map"):
        ltpa.create_model("timm_att", backbone="test_resnet", levels=("layer9",))
    with pytest.raises(ValueError, match="pretrained must be"):
        ltpa.create_model("timm_att", backbone="test_resnet", pretrained="yes")
    with pytest.raises(ValueError, match="not both"):
        ltpa.create_model("timm_att", backbone="test_resnet", pretrained="download", weights=tmp_path / "w.pth")
    with pytest.raises(TypeError, match="unknown option 'width'"):
        ltpa.create_model("timm_att", width=0.5)  # timm architectures have no width multiplier


def test_input_smaller_than_the_last_reduction_is_a_clear_error():
    model = ltpa.create_model("timm_att", num_classes=3, backbone="convnext_atto", levels=(1, 2))
    assert model.min_input_size == 32
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.zeros(1, 3, 24, 24))


def test_reset_classifier_keeps_the_backbone():
    model = ltpa.create_model("timm_att", num_classes=10, backbone="test_resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(3)
    after = model.state_dict()
    assert after["head.classifier.weight"].shape[0] == 3
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head.classifier"))
    assert model(_images(32)).logits.shape == (2, 3)


def test_untraceable_backbone_warns_and_falls_back_to_half_the_stride(monkeypatch):
    from ltpa.models import backbone

    def fail(*args, **kwargs):
        raise NotImplementedError("op without a meta kernel")

    monkeypatch.setattr(backbone, "trace_geometry", fail)
    with pytest.warns(UserWarning, match="could not trace.*meta kernel"):
        model = ltpa.create_model("timm_att", num_classes=3, backbone="test_resnet", levels=(1, 2))
    assert [lv.offset for lv in model.levels] == [2.0, 4.0]
