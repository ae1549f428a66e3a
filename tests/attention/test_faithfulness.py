import pytest
import torch
from torch import nn

from ltpa.attention import deletion_insertion, road
from ltpa.attention.faithfulness import blur


class _RegionModel(nn.Module):
    """Class 0's logit is the sum of channel 0 inside a region, class 1's is 0."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x):
        score = (x[:, 0] * self.region).flatten(1).sum(1)
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_deleting_the_evidence_first_drops_the_score_faster():
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:4, 2:4] = True
    model = _RegionModel(region).train()
    images = torch.ones(3, 3, 8, 8)
    before = images.clone()
    good = region.float().expand(3, 8, 8)
    result = deletion_insertion(model, images, {"good": good, "bad": 1 - good}, steps=4, batch_size=7,
                                insertion_baseline="mean")
    good_del, bad_del = result["methods"]["good"]["deletion"], result["methods"]["bad"]["deletion"]
    assert good_del["auc"] < bad_del["auc"]
    assert result["methods"]["good"]["insertion"]["auc"] > result["methods"]["bad"]["insertion"]["auc"]
    start = torch.softmax(torch.tensor([4.0, 0.0]), 0)[0].item()
    assert good_del["curve"][0] == pytest.approx(start) and good_del["curve"][-1] == pytest.approx(0.5)
    assert result["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert model.training and torch.equal(images, before)


def test_blur_keeps_constant_images_and_bad_inputs_are_refused():
    flat = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(blur(flat, 2.0), flat)
    model = _RegionModel(torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="like the images"):
        deletion_insertion(model, flat, {"m": torch.ones(1, 4, 4)})
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(model, flat, {"m": torch.ones(1, 8, 8)}, steps=0)
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion(model, flat, {"m": torch.ones(1, 8, 8)}, deletion_baseline="zero")


def test_road_removing_the_evidence_first_lowers_morf_and_keeping_it_raises_lerf():
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[3:5, 3:5] = True
    model = _RegionModel(region).train()
    images = torch.zeros(3, 3, 8, 8)
    images[:, :, 3:5, 3:5] = 1.0  # the evidence is bright on a dark image; imputation fills it dark
    before = images.clone()
    good = region.double().expand(3, 8, 8) + 0.01 * torch.rand(3, 8, 8, dtype=torch.float64)
    bad = 1 - good
    state = torch.random.get_rng_state()
    result = road(model, images, {"good": good, "bad": bad}, percentiles=(50, 90), batch_size=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert result["removed_fractions"] == [0.5, 0.1]
    good_scores, bad_scores = result["methods"]["good"], result["methods"]["bad"]
    assert good_scores["road_morf"] < bad_scores["road_morf"]
    assert good_scores["road_lerf"] > bad_scores["road_lerf"]
    assert good_scores["road_combined"] > bad_scores["road_combined"]
    start = torch.softmax(torch.tensor([4.0, 0.0]), 0)[0].item()
    assert bad_scores["morf"][1] == pytest.approx(start, abs=0.02)  # removing 10% background: no change
    assert good_scores["morf"][1] < 0.6  # removing the top 10% (the 4 evidence pixels): near chance
    again = road(model, images, {"good": good, "bad": bad}, percentiles=(50, 90))
    assert again["methods"] == result["methods"]  # seeded imputation noise
    other = road(model, images, {"good": good, "bad": bad}, percentiles=(50, 90), seed=1)
    assert other["methods"]["good"]["morf"] != good_scores["morf"]  # the seed draws the noise
    assert model.training and torch.equal(images, before)
    with pytest.raises(ValueError, match="percentiles"):
        road(model, images, {"good": good}, percentiles=(0,))


def test_analysis_runs_convolutions_in_channels_last_and_puts_the_weights_back():
    import ltpa
    from ltpa.attention._inputs import inference_layout

    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att3", num_classes=3, width=0.0625).eval()
    seen = []
    model.trunk.conv1.conv.register_forward_pre_hook(lambda m, args: seen.append(
        (m.weight.is_contiguous(memory_format=torch.channels_last), args[0].is_contiguous(memory_format=torch.channels_last))))
    tensors = {name: p.data_ptr() for name, p in model.named_parameters()}
    images, heat = torch.randn(2, 3, 32, 32), torch.rand(2, 32, 32)
    result = deletion_insertion(model, images, {"m": heat}, steps=2)
    assert seen and all(weight and inputs for weight, inputs in seen)
    assert all(p.data_ptr() == tensors[name] for name, p in model.named_parameters())  # the same tensors back
    seen.clear()
    with inference_layout(model):  # nested: the outer block owns the layout
        again = deletion_insertion(model, images, {"m": heat}, steps=2)
        assert model.trunk.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.data_ptr() == tensors[name] for name, p in model.named_parameters())
    assert again["methods"]["m"]["deletion"]["auc"] == pytest.approx(result["methods"]["m"]["deletion"]["auc"])

    class _Flattening(nn.Module):  # a user's model that assumes the default layout keeps it
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 2, 3, padding=1), nn.Linear(2 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(self.conv(x).view(x.shape[0], -1))

    user = _Flattening()
    deletion_insertion(user, torch.randn(2, 3, 8, 8), {"m": torch.rand(2, 8, 8)}, steps=2)
    assert user.conv.weight.is_contiguous()


def test_the_curves_show_progress_only_when_asked(capsys):
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:4, 2:4] = True
    model, images = _RegionModel(region), torch.ones(2, 3, 8, 8)
    heat = {"m": torch.rand(2, 8, 8, dtype=torch.float64)}
    deletion_insertion(model, images, heat, steps=2)
    road(model, images, heat, percentiles=(50,))
    assert capsys.readouterr().err == ""
    deletion_insertion(model, images, heat, steps=2, progress=True)
    road(model, images, heat, percentiles=(50,), progress=True)
    err = capsys.readouterr().err
    assert "deletion/insertion" in err and "ROAD" in err


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")
def test_road_batches_every_map_of_an_image_without_changing_the_result():
    """A map-by-map reference (grad-cam's removal and imputation, noise drawn in the same order:
    image, map, MoRF then LeRF, percentile) gives the same curves as the batched road()."""
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:5, 3:6] = True
    model = _RegionModel(region)
    torch.manual_seed(3)
    images = torch.rand(3, 3, 8, 8)
    heats = {"a": torch.rand(3, 8, 8, dtype=torch.float64), "b": torch.rand(3, 8, 8, dtype=torch.float64)}
    percentiles = (30, 60, 90)
    result = road(model, images, heats, percentiles=percentiles, batch_size=4, seed=5)
    imputer = NoisyLinearImputer()
    removers = [cls(p, imputer) for cls in (RemoveMostRelevantFirst, RemoveLeastRelevantFirst) for p in percentiles]
    expected = {name: [] for name in heats}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        for index in range(3):
            target = int(model(images[index:index + 1]).argmax(1))
            for name, heat in heats.items():
                imputed = torch.stack([remove(images[index], heat[index]).float() for remove in removers])
                expected[name].append(model(imputed).softmax(1)[:, target].double())
    for name in heats:
        per_image = torch.stack(expected[name])  # (images, 2 * percentiles)
        mean = per_image.mean(0)
        scores = result["methods"][name]
        assert scores["morf"] == pytest.approx(mean[:3].tolist(), rel=1e-6)
        assert scores["lerf"] == pytest.approx(mean[3:].tolist(), rel=1e-6)
        # standard errors: sample std over the three images' own scores, / sqrt(3)
        morf, lerf = per_image[:, :3].mean(1), per_image[:, 3:].mean(1)
        for key, values in (("road_morf", morf), ("road_lerf", lerf), ("road_combined", (lerf - morf) / 2)):
            assert scores[key] == pytest.approx(float(values.mean()), rel=1e-6)
            spread = [(float(v) - float(values.mean())) ** 2 for v in values]
            assert scores[f"{key}_se"] == pytest.approx((sum(spread) / 2) ** 0.5 / 3 ** 0.5, rel=1e-6)
    single = road(model, images[:1], {name: heat[:1] for name, heat in heats.items()}, percentiles=percentiles)
    assert single["methods"]["a"]["road_combined_se"] is None


class _CountingModel(nn.Module):
    """A small convolutional classifier that counts the images it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(16, 3))
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_deletion_insertion_equals_a_step_by_step_reference_with_shared_end_points(steps):
    """Each curve point is the tracked class's probability on the image with the map's top
    round(k/steps * H*W) pixels replaced (deletion: by 0, the mean of normalised inputs; insertion:
    the blurred image with the image put back); the end points, the same for every map, take one
    forward pass per image."""
    from ltpa.attention.faithfulness import _ranks

    model = _CountingModel()
    torch.manual_seed(1)
    images = torch.rand(5, 3, 6, 6)
    heats = {"a": torch.rand(5, 6, 6), "b": torch.rand(5, 6, 6), "c": torch.rand(5, 6, 6)}
    result = deletion_insertion(model, images, heats, steps=steps, batch_size=12, deletion_baseline="mean",
                                insertion_baseline="blur", blur_sigma=1.0)
    # three end-point images (intact, deleted, blurred) per image, then each curve's inner steps
    assert model.seen == 5 * 3 + 5 * len(heats) * 2 * (steps - 1)
    with torch.no_grad():
        for name, heat in heats.items():
            curves = {"deletion": [], "insertion": []}
            for i in range(5):
                image = images[i]
                target = int(model(image[None]).argmax(1))
                order = _ranks(heat[i:i + 1])[0].view(6, 6)
                mean = torch.zeros_like(image)
                blurred = blur(image[None], 1.0)[0]
                for kind, (source, fill) in {"deletion": (image, mean), "insertion": (blurred, image)}.items():
                    points = []
                    for k in range(steps + 1):
                        changed = order < round(k / steps * 36)
                        probe = torch.where(changed, fill, source)
                        points.append(float(model(probe[None]).softmax(1)[0, target]))
                    curves[kind].append(points)
            for kind in curves:
                per_image = torch.tensor(curves[kind], dtype=torch.float64)
                expected = per_image.mean(0)
                scores = result["methods"][name][kind]
                assert scores["curve"] == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-7)
                # the AUC's standard error over the five images, from their own AUCs
                aucs = [float(torch.trapezoid(c, torch.linspace(0, 1, steps + 1, dtype=torch.float64)))
                        for c in per_image]
                assert scores["auc"] == pytest.approx(sum(aucs) / 5, rel=1e-5)
                assert scores["auc_se"] == pytest.approx(torch.tensor(aucs).std().item() / 5**0.5, rel=1e-4, abs=1e-8)
    single = deletion_insertion(model, images[:1], {"a": heats["a"][:1]}, steps=steps)
    assert single["methods"]["a"]["deletion"]["auc_se"] is None  # no spread from one image
