"""Every registered model: shapes against ``levels``, normalisation, gradients, counts, errors."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ltpa
from ltpa.models import AttentionOutput
from ltpa.models.blocks import scale_grad

TINY = dict(width=0.0625)
TINY_FOR = {"timm_att": dict(backbone="test_resnet")}  # timm architectures have no width multiplier
SIZES = [32, 80, (50, 70)]


def _images(size, batch=2, seed=0):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("name", ltpa.list_models())
def test_every_model_runs_forward_and_backward(name, size):
    torch.manual_seed(0)
    model = ltpa.create_model(name, num_classes=5, input_size=size, **TINY_FOR.get(name, TINY))
    images = _images(size)
    out = model(images)
    assert isinstance(out, AttentionOutput)
    assert out.logits.shape == (2, 5)
    assert torch.isfinite(out.logits).all()
    assert len(out.maps) == len(out.levels) == len(model.levels)
    for attn, level in zip(out.maps, out.levels):
        # 2x2 pools round map sizes down, padded strided convs (ResNets) round up
        h, w = (images.shape[d] / level.stride for d in (2, 3))
        assert attn.shape[:2] == (2, 1), (level, attn.shape)
        assert attn.shape[2] in (math.floor(h), math.ceil(h)), (level, attn.shape)
        assert attn.shape[3] in (math.floor(w), math.ceil(w)), (level, attn.shape)
        assert torch.isfinite(attn).all()
    out.logits.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"


@pytest.mark.parametrize("normalisation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("placement", ["before", "after"])
@pytest.mark.parametrize("compat", ["pc", "dp"])
@pytest.mark.parametrize("channel_match", ["project_g", "project_l"])
@pytest.mark.parametrize("head", ["concat", "indep"])
def test_attention_option_matrix(normalisation, placement, compat, channel_match, head):
    model = ltpa.create_model("vgg_att3", num_classes=3, normalisation=normalisation, placement=placement,
                              compat=compat, channel_match=channel_match, head=head, **TINY)
    out = model(_images(32))
    assert out.normalisation == normalisation
    for attn, level in zip(out.maps, out.levels):
        assert level.name.startswith("conv" if placement == "before" else "pool")
        if normalisation == "softmax":
            torch.testing.assert_close(attn.sum(dim=(2, 3)), torch.ones(2, 1))
        else:
            # (0, 1) mathematically; raw dot products can saturate fp32 to exactly 0 or 1
            assert ((attn >= 0) & (attn <= 1)).all()
    names = [n for n, _ in model.named_parameters()]
    has_compat = any(".compat." in n for n in names)
    assert has_compat == (compat == "pc")
    assert any(".proj." in n for n in names) == (channel_match == "project_l")
    assert any(n.startswith("attention.g") for n in names) == (channel_match == "project_g")


def test_levels_geometry_of_the_paper_models():
    att3 = ltpa.create_model("vgg_att3", num_classes=100)
    assert [(lv.name, lv.channels, lv.stride) for lv in att3.levels] == [
        ("conv7", 256, 1.0), ("conv10", 512, 2.0), ("conv13", 512, 4.0)]
    cub = ltpa.create_model("vgg_att2", num_classes=200, input_size=80, **TINY)
    assert cub.options["first_pool"] == 5
    out = cub(_images(80))
    assert [tuple(m.shape[2:]) for m in out.maps] == [(16, 16), (8, 8)]  # the CIFAR geometry
    after = ltpa.create_model("vgg_att3", num_classes=10, placement="after", **TINY)
    assert [lv.stride for lv in after.levels] == [2.0, 4.0, 8.0]
    for model in (att3, cub, after):  # k x k / stride-k pools over same-padded convs
        assert all(lv.offset == lv.stride / 2 for lv in model.levels)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _gmacs(model, size=32):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize(
    "name, params_m, gmac",
    [("vgg_att3", 19.97, 3.79), ("vgg_att2", 19.81, 3.79), ("vgg", 15.04, 0.31)],
)
def test_parameter_and_mac_counts_match_the_paper_spec(name, params_m, gmac):
    model = ltpa.create_model(name, num_classes=100)
    assert _count(model) / 1e6 == pytest.approx(params_m, abs=0.005)
    assert _gmacs(model) == pytest.approx(gmac, abs=0.005)


def test_dot_product_compatibility_has_no_parameters():
    pc = ltpa.create_model("vgg_att2", num_classes=10, compat="pc")
    dp = ltpa.create_model("vgg_att2", num_classes=10, compat="dp")
    assert _count(pc) - _count(dp) == 512 + 512  # one u vector per level, no bias under softmax
    assert not [n for n, _ in dp.named_parameters() if n.startswith("attention.")]


def test_no_attention_ablation_differs_only_by_attention_parts():
    att = ltpa.create_model("vgg_att3", num_classes=10)
    plain = ltpa.create_model("vgg_noatt", num_classes=10)
    att_sd, plain_sd = att.state_dict(), plain.state_dict()
    shared = [k for k in plain_sd if not k.startswith("head.")]
    assert shared and all(att_sd[k].shape == plain_sd[k].shape for k in shared)
    only_att = {k.split(".")[0] for k in set(att_sd) - set(plain_sd)}
    assert only_att <= {"attention", "head"}
    # same trunk compute: the attention parts add only a few MMACs
    assert _gmacs(att) - _gmacs(plain) < 0.01


def test_state_dict_names_are_readable():
    names = set(ltpa.create_model("vgg_att3", num_classes=10).state_dict())
    for expected in ["trunk.conv7.conv.weight", "trunk.conv7.bn.running_mean", "global.fc.weight",
                     "attention.0.compat.weight", "attention.g256.fc.weight", "head.classifier.weight"]:
        assert expected in names


def test_trunk_uses_paper_batchnorm_eps_and_msr_init():
    model = ltpa.create_model("vgg_att3", num_classes=10)
    assert model.trunk.conv7.bn.eps == 1e-3
    weight = model.trunk.conv13.conv.weight
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.02)
    assert model.trunk.conv13.conv.bias.abs().max() == 0


def test_grad_average_scales_gradients_where_branches_join():
    torch.manual_seed(0)
    plain = ltpa.create_model("vgg_att3", num_classes=4, **TINY).eval()
    averaged = ltpa.create_model("vgg_att3", num_classes=4, grad_average=True, **TINY).eval()
    averaged.load_state_dict(plain.state_dict())
    images = _images(32)
    for model in (plain, averaged):
        model(images).logits.sum().backward()
    # the classifier is downstream of every join: unchanged
    torch.testing.assert_close(averaged.head.classifier.weight.grad, plain.head.classifier.weight.grad)
    # g feeds three levels: it receives the mean, not the sum
    torch.testing.assert_close(averaged.get_submodule("global").fc.weight.grad,
                               plain.get_submodule("global").fc.weight.grad / 3)


def test_scale_grad_scales_the_sum_over_all_uses():
    x = torch.ones(3, requires_grad=True)
    h = x * 2
    scale_grad(h, 0.5)
    (h.sum() + (3 * h).sum()).backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 4.0))  # 2 * (1 + 3) * 0.5


def test_vgg_gap_returns_normalised_cam_of_predicted_class():
    model = ltpa.create_model("vgg_gap", num_classes=6, **TINY).eval()
    images = _images(32)
    out = model(images)
    assert out.normalisation == "cam"
    torch.testing.assert_close(out.maps[0].sum(dim=(2, 3)), torch.ones(2, 1))
    local = model.forward_features(images)["conv13"]
    expected = model.cam(local, out.logits.argmax(1))
    torch.testing.assert_close(out.scores[0], expected)


def test_reset_classifier_changes_only_the_head():
    model = ltpa.create_model("vgg_att2", num_classes=100, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(200)
    after = model.state_dict()
    assert after["head.classifier.weight"].shape[0] == 200
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head.classifier"))


def test_bf16_channels_last_forward_matches_fp32():
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att3", num_classes=4, width=0.125).eval()
    images = _images(32)
    with torch.no_grad():
        reference = model(images)
        fast_model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = fast_model(images.to(memory_format=torch.channels_last))
    assert fast.logits.dtype == torch.bfloat16  # the fast path really ran in bf16
    assert fast.maps[0].dtype == torch.float32
    # Tolerances relative to the outputs' own scale (the logits of a fresh model are ~0.1, so
    # any absolute tolerance near that would pass all-zero logits). Measured bf16 errors: <= 1.3%
    # of the largest logit and <= 5% of each map's peak, natively and with bf16 emulated on the
    # AVX2 and no-SIMD kernels (seeds 0-3).
    scale = reference.logits.abs().max()
    assert scale > 0.05
    assert (fast.logits.float() - reference.logits).abs().max() <= 0.05 * scale
    for fast_map, reference_map in zip(fast.maps, reference.maps):
        assert (fast_map - reference_map).abs().max() <= 0.15 * reference_map.abs().max()


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'vgg_att3'"):
        ltpa.create_model("vgg_att_3")


def test_unknown_option_lists_valid_options():
    with pytest.raises(TypeError, match="Did you mean 'compat'"):
        ltpa.create_model("vgg_att3", compt="dp")
    with pytest.raises(TypeError, match="fixed"):
        ltpa.create_model("vgg_att3", levels=(7,))


@pytest.mark.parametrize("key, value", [("compat", "cosine"), ("head", "sum"), ("normalisation", "relu"),
                                        ("placement", "middle"), ("channel_match", "pad")])
def test_bad_option_values_are_rejected(key, value):
    with pytest.raises(ValueError, match=key):
        ltpa.create_model("vgg_att3", **{key: value})


def test_input_too_small_and_wrong_channels_are_clear_errors():
    model = ltpa.create_model("vgg_att3", num_classes=3, **TINY)
    with pytest.raises(ValueError, match="at least 16x16"):
        model(torch.zeros(1, 3, 12, 12))
    with pytest.raises(ValueError, match="3-channel images, got 1"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(3, 32, 32))


def test_list_models_filters_by_pattern():
    assert ltpa.list_models("vgg_att*") == ["vgg_att1", "vgg_att2", "vgg_att3"]
    with pytest.raises(ValueError, match="num_classes"):
        ltpa.create_model("vgg", num_classes=1)


@pytest.mark.parametrize("compat", ["pc", "dp"])
@pytest.mark.parametrize("normalisation", ["softmax", "sigmoid"])
def test_attention_level_matches_the_paper_equations(compat, normalisation):
    from ltpa.models.blocks import AttentionLevel

    torch.manual_seed(0)
    level = AttentionLevel(6, compat=compat, normalisation=normalisation)
    local, g = torch.randn(2, 6, 3, 4), torch.randn(2, 6)
    g_a, weights, scores = level(local, g)
    if compat == "pc":  # eq. 2: c_i = <u, l_i + g> (+ bias for sigmoid)
        expected = level.compat(local + g[:, :, None, None])
    else:  # c_i = <l_i, g>
        expected = (local * g[:, :, None, None]).sum(1, keepdim=True)
    torch.testing.assert_close(scores, expected)
    flat = expected.flatten(1)
    a = flat.softmax(1) if normalisation == "softmax" else flat.sigmoid()
    torch.testing.assert_close(weights.flatten(1), a)
    aggregate = (a[:, None, :] * local.flatten(2)).sum(2)  # eq. 4: sum_i a_i l_i
    if normalisation == "sigmoid":
        aggregate = aggregate / 12  # spatial mean instead of sum
    torch.testing.assert_close(g_a, aggregate)


@pytest.mark.parametrize("normalisation", ["softmax", "sigmoid"])
def test_attention_level_keeps_channels_last_in_its_gradient(normalisation):
    # A channels_last trunk must get a channels_last gradient back from the aggregation: mixed
    # layouts made the gradient sum and the ReLU backward after it several times slower.
    from ltpa.models.blocks import AttentionLevel

    torch.manual_seed(0)
    level = AttentionLevel(6, compat="pc", normalisation=normalisation).to(memory_format=torch.channels_last)
    local, g = torch.randn(2, 6, 3, 4), torch.randn(2, 6)
    grads = {}

    def attend(name, leaf):
        feature = leaf * 1  # not a leaf: autograd hands its gradient over as computed, layout and all
        feature.register_hook(lambda grad: grads.setdefault(name, grad))
        g_a = level(feature, g)[0]
        (g_a * torch.arange(6.0)).sum().backward()
        return g_a

    expected = attend("nchw", local.clone().requires_grad_())
    g_a = attend("channels_last", local.contiguous(memory_format=torch.channels_last).requires_grad_())
    torch.testing.assert_close(g_a, expected)
    torch.testing.assert_close(grads["channels_last"], grads["nchw"])
    assert grads["channels_last"].is_contiguous(memory_format=torch.channels_last)
    assert grads["nchw"].is_contiguous()


@pytest.mark.parametrize("name", ["vgg_att3", "vgg", "vgg_gap"])
@pytest.mark.parametrize("dropout", [False, True], ids=["no_dropout", "dropout"])
def test_activation_checkpointing_gives_the_same_step(name, dropout):
    # With dropout the recomputed forward must redraw the same masks (the RNG state is replayed).
    torch.manual_seed(0)
    plain = ltpa.create_model(name, num_classes=4, width=0.125, dropout=dropout)
    checkpointed = ltpa.create_model(name, num_classes=4, width=0.125, dropout=dropout, checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    images = _images(32, batch=4)
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        model.train()(images).logits.square().sum().backward()
    for (name_a, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name_a)
    for (key, a), (_, b) in zip(plain.state_dict().items(), checkpointed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"{key}: BN statistics must be updated once per step")


def test_fast_dropout_keeps_with_probability_1_minus_p_and_rescales():
    from ltpa.models.blocks import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.4)
    x = torch.ones(300_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.6) < 0.005
    scale = 65536 / round(0.6 * 65536)  # p is rounded to a multiple of 1/65536 on the CPU
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], scale))
    # Each value comes from one 16-bit lane of a 64-bit random word: every lane must keep 60%
    # (the word's top lane holds its always-zero sign bit), and neighbours must be independent.
    by_lane = kept.view(-1, 3).float().mean(0)
    torch.testing.assert_close(by_lane, torch.full((3,), 0.6), atol=0.006, rtol=0)
    both = (kept[:-1] & kept[1:]).float().mean().item()
    assert abs(both - 0.36) < 0.005
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)  # gradient flows through the kept units only
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_fast_dropout_is_unbiased(p):
    from ltpa.models.blocks import Dropout

    torch.manual_seed(1)
    x = torch.rand(16, 32, 24, 24).contiguous(memory_format=torch.channels_last)
    y = Dropout(p)(x)
    assert abs((y != 0).float().mean().item() - (1 - p)) < 0.005
    assert abs(y.sum().item() / x.sum().item() - 1) < 0.005
    for value in (0.0, 1.0):  # no draw: identity and zeros
        assert Dropout(value)(x).equal(x * (1 - value))


def test_cpu_keep_mask_is_the_threshold_of_consecutive_random_lanes_across_chunks():
    # A reference drawn in one go: the chunked mask must use fresh words for every chunk and the
    # tail, keep a lane exactly when its unsigned value is >= round(p * 65536), and skip the
    # sign-bit lane of each word.
    from ltpa.models.blocks import _cpu_keep_mask

    # 77 values: 5 full chunks of 15 and a tail of 2; 400,003 values: 2 chunks of the default
    # size and a tail, enough values for some lanes to equal the threshold (the >= edge).
    for count, words_per_chunk in ((77, 5), (400_003, 1 << 16)):
        for p in (0.3, 0.5, 0.9):
            torch.manual_seed(5)
            keep, keep_probability = _cpu_keep_mask(torch.empty(count), p, words_per_chunk=words_per_chunk)
            torch.manual_seed(5)
            words = torch.empty((count + 2) // 3, dtype=torch.int64).random_()
            lanes = words.view(torch.int16).view(-1, 4)[:, :3].flatten()[:count].int() + 32768  # on [0, 65536)
            assert torch.equal(keep, lanes >= round(p * 65536))
            assert keep_probability == (65536 - round(p * 65536)) / 65536


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 5, 1, 1), (2, 1, 3, 4), (2, 5, 1, 4), (0, 5, 3, 3)])
def test_cpu_keep_mask_has_the_input_strides(shape):
    from ltpa.models.blocks import _cpu_keep_mask

    for x in (torch.ones(shape), torch.ones(shape).contiguous(memory_format=torch.channels_last)):
        keep, _ = _cpu_keep_mask(x, 0.5)
        assert keep.shape == x.shape and keep.stride() == x.stride()


def test_dropout_handles_empty_inputs_and_p_at_the_ends_of_its_resolution():
    from ltpa.models.blocks import Dropout

    torch.manual_seed(0)
    assert Dropout(0.5)(torch.ones(0, 4, 3, 3)).shape == (0, 4, 3, 3)
    x = torch.ones(1000)
    nearly_all = Dropout(1 - 2**-18)(x)  # rounds to p = 1 on the 1/65536 grid: drawn exactly instead
    assert torch.isfinite(nearly_all).all() and (nearly_all == 0).sum() >= 990
    assert (Dropout(2**-18)(x) != 0).sum() >= 990  # rounds to p = 0 on the grid: drawn exactly instead


def test_fp16_dot_product_scores_do_not_overflow():
    from ltpa.models.blocks import AttentionLevel

    level = AttentionLevel(512, compat="dp", normalisation="softmax")
    local = torch.full((1, 512, 2, 2), 20.0, dtype=torch.float16)  # <l, g> = 512 * 400 > 65504
    g = torch.full((1, 512), 20.0, dtype=torch.float16)
    _, weights, scores = level(local, g)
    assert torch.isfinite(scores).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_grad_average_halves_the_gradient_at_each_attended_feature_map():
    torch.manual_seed(0)
    plain = ltpa.create_model("vgg_att3", num_classes=4, **TINY).eval()
    averaged = ltpa.create_model("vgg_att3", num_classes=4, grad_average=True, **TINY).eval()
    averaged.load_state_dict(plain.state_dict())
    images = _images(32)
    grads = []
    for model in (plain, averaged):
        features = model.forward_features(images)
        features["global"] = features["global"].detach()  # keep only the attention path into l
        for level in model.levels:
            features[level.name].retain_grad()  # retains_grad runs after the model's own hooks
        model.forward_head(features).logits.sum().backward()
        grads.append([features[level.name].grad for level in model.levels])
    # conv13's only other consumer is g's branch (detached here), so its gradient is exactly the
    # attention path's: halved. Shallower levels also get the halved gradients of deeper levels.
    torch.testing.assert_close(grads[1][-1], grads[0][-1] * 0.5)
    assert not torch.allclose(grads[1][0], grads[0][0])


def test_compat_vector_uses_the_official_msr_init_by_default():
    torch.manual_seed(0)
    official = ltpa.create_model("vgg_att3", num_classes=10)
    small = ltpa.create_model("vgg_att3", num_classes=10, compat_init="default")
    u = official.attention["1"].compat.weight
    assert u.std().item() == pytest.approx(math.sqrt(2), rel=0.1)
    assert small.attention["1"].compat.weight.std().item() < 0.1


def test_indep_log_softmax_and_logits_give_the_same_loss():
    torch.manual_seed(0)
    a = ltpa.create_model("vgg_att2", num_classes=5, head="indep", indep_reduce="logits", **TINY).eval()
    b = ltpa.create_model("vgg_att2", num_classes=5, head="indep", indep_reduce="log_softmax", **TINY).eval()
    b.load_state_dict(a.state_dict())
    images, targets = _images(32), torch.tensor([1, 3])
    loss_a = torch.nn.functional.cross_entropy(a(images).logits, targets)
    loss_b = torch.nn.functional.cross_entropy(b(images).logits, targets)
    torch.testing.assert_close(loss_a, loss_b)
