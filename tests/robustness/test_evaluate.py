"""Accuracy vs epsilon: analytic counts, the same perturbation for any normalisation, model state
restored, and the files of ``run_robustness``."""
import json

import pytest
import torch
from PIL import Image

from ltpa.robustness import attack_accuracy, format_table, parse_eps, robustness_curve, run_robustness
from robustness_helpers import linear_trained, save_tiny

EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


def _linear_data(n=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 8, 8, generator=generator) * 0.1
    images = (64 + torch.rand(n, 3, 8, 8, generator=generator) * 128).to(torch.uint8)  # no pixel clamp at 8/255
    return weight, images


def test_parse_eps_reads_fractions_and_adds_clean():
    assert parse_eps("1/255, 2/255,0.05") == (0.0, 1 / 255, 2 / 255, 0.05)
    assert parse_eps([0.1, 0.0, 0.1]) == (0.0, 0.1)
    for bad in ("8", "x/255", "1/0", "", "-0.1"):
        with pytest.raises(ValueError, match="eps"):
            parse_eps(bad)


def test_fgsm_accuracy_matches_the_analytic_count_on_a_linear_model():
    weight, images = _linear_data()
    mean, std = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)
    trained = linear_trained(weight, mean=mean, std=std, bias=0.05)
    pixels = images.float() / 255
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    scores = ((pixels - mean_t) / std_t * weight).flatten(1).sum(1) + 0.05
    targets = (torch.arange(len(images)) % 2).long()  # about half the images start misclassified
    # FGSM moves s by eps * ||w / std||_1 against the true class (the exact L-inf worst case)
    slope = float((weight / std_t[0]).abs().sum())
    expected = [int(((scores - e * slope > 0) & (targets == 0)).sum()
                    + ((scores + e * slope < 0) & (targets == 1)).sum()) for e in EPS]
    curve = attack_accuracy(trained, images, targets, attack="fgsm", eps=EPS, batch_size=64)
    assert curve.eps == EPS
    assert list(curve.correct) == expected
    assert expected[0] > expected[-1]  # the case is not trivial: the attack flips images


def test_eps_is_the_same_pixel_perturbation_whatever_the_normalisation():
    weight, images = _linear_data(seed=1)
    targets = (torch.arange(len(images)) % 2).long()
    # model A sees raw pixels; model B normalises with mean/std and compensates in its weights, so
    # both compute the same function of the pixels and must lose the same images at every eps
    mean, std = (0.5, 0.45, 0.4), (0.05, 0.1, 0.3)
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    plain = linear_trained(weight, mean=(0, 0, 0), std=(1, 1, 1), name="plain")
    normalised = linear_trained(weight * std_t, mean=mean, std=std, bias=float((weight * mean_t).sum()), name="norm")
    for attack in ("fgsm", "pgd"):
        result = robustness_curve([plain, normalised], images, targets, attack=attack, eps=EPS, steps=5)
        a, b = result.curves
        assert a.correct == b.correct, attack
        assert a.correct[0] > a.correct[-1]


def test_attack_restores_the_models_state(tiny, batch):
    images, targets = batch
    model = tiny.model
    model.train()
    model.head.classifier.weight.requires_grad_(False)
    marker = torch.full_like(model.trunk.conv1.conv.weight, 3.0)
    model.trunk.conv1.conv.weight.grad = marker
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        curve = attack_accuracy(tiny, images, targets, attack="pgd", eps=[2 / 255], steps=2)
        assert model.training and all(m.training for m in model.modules())
        assert not model.head.classifier.weight.requires_grad
        assert model.trunk.conv2.conv.weight.requires_grad
        assert model.trunk.conv1.conv.weight.grad is marker
        assert model.trunk.conv2.conv.weight.grad is None
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched: eval mode
    finally:
        model.eval()
        model.head.classifier.weight.requires_grad_(True)
        model.trunk.conv1.conv.weight.grad = None
    with torch.no_grad():
        clean = int((model(tiny.prepare(images)).logits.argmax(1) == targets).sum())
    assert curve.correct[0] == clean  # eps 0 is the clean accuracy, in eval mode


def test_attack_accuracy_rejects_bad_inputs(tiny, batch):
    images, targets = batch
    with pytest.raises(ValueError, match="attack must be one of fgsm, pgd"):
        attack_accuracy(tiny, images, targets, attack="cw")
    with pytest.raises(ValueError, match="classes of the model"):
        attack_accuracy(tiny, images, targets + 10)
    with pytest.raises(TypeError, match="uint8"):
        attack_accuracy(tiny, images.float(), targets)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    (root / "vgg").mkdir()
    (root / "att").mkdir()
    return [save_tiny(root / "vgg", model="vgg", seed=2).checkpoint, save_tiny(root / "att", seed=3).checkpoint]


DATA = "synthetic:num_test=24,num_train=8,num_classes=4"


def test_run_robustness_writes_json_and_png(two_checkpoints, tmp_path):
    out = tmp_path / "report"
    result = run_robustness(two_checkpoints, out, data=DATA, attack="fgsm", eps="2/255,8/255", batch_size=10)
    record = json.loads((out / "robustness.json").read_text())
    assert record["format"] == "ltpa-robustness" and record["files"] == ["robustness.json", "robustness.png"]
    assert record["eps"] == [0.0, 2 / 255, 8 / 255] and record["eps_x255"] == [0.0, 2.0, 8.0]
    assert [c["model"] for c in record["curves"]] == ["vgg", "vgg_att3"]
    assert all(c["num_images"] == 24 and len(c["accuracy"]) == 3 for c in record["curves"])
    for curve in record["curves"]:
        for accuracy, (low, high) in zip(curve["accuracy"], curve["accuracy_ci95_wilson"]):
            assert low <= accuracy <= high
    with Image.open(out / "robustness.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200
    table = format_table(result)
    assert "FGSM" in table and "8/255" in table and "vgg_att3" in table


def test_run_robustness_never_touches_files_it_did_not_write(two_checkpoints, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_robustness(two_checkpoints[:1], out, data=DATA, eps="8/255")
    with pytest.raises(ValueError, match="not written by ltpa"):
        run_robustness(two_checkpoints[:1], out, data=DATA, eps="8/255", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # a folder holding a robustness.json but no manifest is still not ltpa's: refused, untouched
    (out / "robustness.json").write_text(json.dumps({"format": "ltpa-robustness", "files": ["notes.txt"]}))
    with pytest.raises(ValueError, match="not written by ltpa"):
        run_robustness(two_checkpoints[:1], out, data=DATA, eps="8/255", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    # an earlier result ltpa wrote (its manifest lists it): replaced; the user's file added since stays
    out = tmp_path / "earlier"
    run_robustness(two_checkpoints[:1], out, data=DATA, eps="4/255")
    (out / "notes.txt").write_text("mine")
    (out / "robustness.png").write_bytes(b"old")
    run_robustness(two_checkpoints[:1], out, data=DATA, eps="8/255", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".ltpa-manifest.json", "notes.txt", "robustness.json",
                                                    "robustness.png"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "robustness.png").read_bytes() != b"old"
    assert json.loads((out / "robustness.json").read_text())["eps"] == [0.0, 8 / 255]
    # even a folder holding an earlier result is kept unless --overwrite is given
    before = (out / "robustness.json").read_bytes()
    with pytest.raises(ValueError, match="pass overwrite=True"):
        run_robustness(two_checkpoints[:1], out, data=DATA, eps="4/255")
    assert (out / "robustness.json").read_bytes() == before


def test_run_robustness_needs_one_data_set_for_all_checkpoints(tmp_path):
    a = save_tiny(tmp_path / "a", data="synthetic").checkpoint
    b = save_tiny(tmp_path / "b", data="synthetic:num_classes=4").checkpoint
    with pytest.raises(ValueError, match="pass data=SPEC") as info:
        run_robustness([a, b], tmp_path / "out")
    assert "pass --data SPEC" in info.value.render(cli=True)  # what `ltpa robustness` prints
    assert not (tmp_path / "out").exists()
