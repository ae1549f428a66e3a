"""Linear probes on frozen features: which features, the split, the cache, and accuracies that
must be high (separable classes) or at chance (shuffled labels)."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from ltpa import create_model
from ltpa.inference import load_trained
from ltpa.runs.checkpoints import save_checkpoint
from ltpa.runs.config import TrainConfig
from ltpa.transfer import probe as probe_module
from ltpa.transfer.features import available_features, default_features, extract_features
from ltpa.transfer.probe import linear_probe, run_probe, wilson_interval

CUB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cub200-mini"
FAST = dict(cs=(0.01, 1.0), folds=3, workers=0)  # a small C grid keeps each probe under a second
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):  # scikit-learn's BLAS threads crawl on a busy 2-core machine
        yield


def _save(directory, model="vgg_att3", seed=0, num_classes=4):
    torch.manual_seed(seed)
    config = TrainConfig(model=model, model_options={"width": 0.0625}, num_classes=num_classes,
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    net = create_model(model, num_classes=num_classes, width=0.0625, input_size=32)
    return load_trained(save_checkpoint(directory, "tiny", model=net, config=config.to_dict(), epoch=0, step=0,
                                        rng=False))


@pytest.fixture(scope="module")
def att(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("att"))


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("vgg"), model="vgg", seed=1)


def _colour_folder(root, *, per_class=16, shuffle_labels=False, seed=0):
    """Three classes of noisy solid-colour images (sizes vary); with ``shuffle_labels`` each image
    goes to a random class folder, so the folder name says nothing about the colour."""
    rng = np.random.default_rng(seed)
    images = []
    for colour in COLOURS:
        for _ in range(per_class):
            height, width = rng.integers(36, 60, size=2)
            noise = rng.normal(0, 30, (height, width, 3))
            images.append(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))
    labels = np.repeat(np.arange(len(COLOURS)), per_class)
    if shuffle_labels:
        labels = rng.permutation(labels)
    for index, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"img_{index:03d}.png")
    return root


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_feature_kinds_follow_the_paper(att, vgg):
    assert available_features(att.model) == ("attention", "penultimate", "level:conv7", "level:conv10",
                                             "level:conv13")
    assert default_features(att.model) == "attention" and default_features(vgg.model) == "penultimate"
    assert available_features(vgg.model) == ("penultimate",)
    assert available_features(create_model("vgg_gap", num_classes=3, width=0.0625)) == ("penultimate",)
    assert available_features(create_model("vgg_noatt", num_classes=3, width=0.0625)) == ("penultimate",)
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="offers penultimate"):
        extract_features(vgg, images, "attention")
    with pytest.raises(ValueError, match="level:conv7, level:conv10"):
        extract_features(att, images, "level:conv99")


def test_attention_features_are_the_attended_vectors(att):
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = att.model
    model.train()  # must be restored, and features computed in eval mode anyway
    try:
        features = {kind: extract_features(att, images, kind, batch_size=2) for kind in available_features(model)}
        assert model.training and not model.head._forward_pre_hooks
    finally:
        model.eval()
    with torch.no_grad():
        local = model.forward_features(att.prepare(images))
        output = model.forward_head(local)
    for level, attention in zip(model.levels, output.maps):
        # eq. 4 of the paper: g_a = sum_i a_i l_i, from the local features and the returned map
        expected = (local[level.name] * attention).sum(dim=(2, 3))
        torch.testing.assert_close(features[f"level:{level.name}"], expected, rtol=1e-4, atol=1e-5)
    joined = torch.cat([features[f"level:{level.name}"] for level in model.levels], dim=1)
    torch.testing.assert_close(features["attention"], joined)
    assert features["attention"].shape == (5, sum(level.channels for level in model.levels))
    torch.testing.assert_close(features["penultimate"], output.features)


def test_probe_separates_trivially_separable_classes(att, tmp_path):
    folder = _colour_folder(tmp_path / "colours")
    result = linear_probe(att, f"folder:{folder}", train_per_class=8, **FAST)
    assert (result.num_train, result.num_test, len(result.class_names)) == (24, 24, 3)
    assert result.accuracy >= 0.9 and result.ci95[0] > 1 / 3
    assert result.features == "attention" and result.feature_dim == sum(lv.channels for lv in att.model.levels)
    assert result.C in FAST["cs"] and result.cv_folds == 3
    assert "note: C = " in result.summary() and "edge of the searched grid" in result.summary()  # 2-value grid


def test_probe_with_shuffled_labels_is_at_chance(att, tmp_path):
    folder = _colour_folder(tmp_path / "shuffled", per_class=24, shuffle_labels=True)
    result = linear_probe(att, f"folder:{folder}", train_per_class=12, **FAST)
    assert result.num_test == 36
    assert result.ci95[0] <= 1 / 3 <= result.ci95[1] and result.accuracy < 0.55


def test_penultimate_probe_of_a_baseline(vgg, tmp_path):
    folder = _colour_folder(tmp_path / "colours")
    result = linear_probe(vgg, f"folder:{folder}", train_per_class=8, **FAST)
    assert result.features == "penultimate" and result.feature_dim == 32  # 512 * 1/16
    assert result.accuracy >= 0.9


def test_per_class_split_is_seeded_and_exclusive(att, tmp_path, monkeypatch):
    folder = _colour_folder(tmp_path / "colours")
    seen = {}
    real = probe_module.fit_linear_probe

    def spy(train_x, train_y, test_x, test_y, **kwargs):
        seen.setdefault("runs", []).append((train_x.clone(), train_y.clone(), test_x.clone(), test_y.clone()))
        return real(train_x, train_y, test_x, test_y, **kwargs)

    monkeypatch.setattr(probe_module, "fit_linear_probe", spy)
    for seed in (0, 0, 1):
        linear_probe(att, f"folder:{folder}", train_per_class=5, test_per_class=3, split_seed=seed, **FAST)
    (train_x, train_y, test_x, test_y), again, other = seen["runs"]
    assert torch.bincount(train_y).tolist() == [5, 5, 5] and torch.bincount(test_y).tolist() == [3, 3, 3]
    assert not any(torch.equal(row, t) for row in train_x for t in test_x)  # no image in both splits
    assert torch.equal(train_x, again[0]) and not torch.equal(train_x, other[0])
    dropped = linear_probe(att, f"folder:{folder}", train_per_class=5, exclude_classes=["class1"], **FAST)
    assert dropped.class_names == ("class0", "class2") and dropped.num_test == 22
    with pytest.raises(ValueError, match="leaves no test image"):
        linear_probe(att, f"folder:{folder}", train_per_class=16, **FAST)
    with pytest.raises(ValueError, match="unknown class"):
        linear_probe(att, f"folder:{folder}", exclude_classes=["clas1"], **FAST)


SYNTHETIC = "synthetic:num_train=60,num_test=40,num_classes=4"


def test_synthetic_probe_and_its_feature_cache(att, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    first = linear_probe(att, SYNTHETIC, cache_dir=cache, **FAST)
    assert first.cache == {"train": "built", "test": "built"}
    assert (first.num_train, first.num_test, len(first.class_names)) == (60, 40, 4)
    assert first.ci95[0] <= first.accuracy <= first.ci95[1]
    files = sorted(cache.glob("probe-*.safetensors"))
    assert len(files) == 2

    def no_features(*args, **kwargs):
        raise AssertionError("features were recomputed despite a valid cache")

    monkeypatch.setattr(probe_module, "extract_features", no_features)
    second = linear_probe(att, SYNTHETIC, cache_dir=cache, **FAST)
    assert second.cache == {"train": "hit", "test": "hit"} and second.correct == first.correct
    monkeypatch.undo()

    files[0].write_bytes(b"not a safetensors file")  # corrupt
    with caplog.at_level(logging.WARNING, logger="ltpa.transfer.features"):
        third = linear_probe(att, SYNTHETIC, cache_dir=cache, **FAST)
    assert sorted(third.cache.values()) == ["built", "hit"] and "unreadable feature cache" in caplog.text
    assert third.correct == first.correct

    # another feature kind or another split of the data never reads these files
    level = linear_probe(att, SYNTHETIC, cache_dir=cache, features="level:conv13", **FAST)
    assert level.cache == {"train": "built", "test": "built"}
    assert level.feature_dim == 32  # conv13: 512 channels at width 1/16
    assert len(list(cache.glob("probe-*.safetensors"))) == 4


def test_stale_cache_is_ignored(att, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    linear_probe(att, SYNTHETIC, cache_dir=cache, **FAST)
    for path in cache.glob("probe-*.safetensors"):  # same file name, different content
        tensors = load_file(path)
        tensors["features"] = torch.zeros_like(tensors["features"])
        save_file(tensors, path, metadata={"format": "ltpa-probe-features", "key": "something else"})
    with caplog.at_level(logging.WARNING, logger="ltpa.transfer.features"):
        again = linear_probe(att, SYNTHETIC, cache_dir=cache, **FAST)
    assert again.cache == {"train": "built", "test": "built"} and "does not match" in caplog.text


def test_run_probe_writes_its_json_and_never_touches_other_files(att, tmp_path):
    folder = _colour_folder(tmp_path / "colours", per_class=6)
    out = tmp_path / "out"
    result = run_probe(att, f"folder:{folder}", out, train_per_class=3, **FAST)
    record = json.loads((out / "probe.json").read_text())
    assert record["format"] == "ltpa-probe" and record["files"] == ["probe.json"]
    assert record["test_accuracy"] == result.accuracy and record["ci_method"] == "wilson"
    assert record["num_classes"] == 3 and set(record["per_class_accuracy"]) == {"class0", "class1", "class2"}
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        run_probe(att, f"folder:{folder}", out, train_per_class=3, **FAST)
    run_probe(att, f"folder:{folder}", out, overwrite=True, train_per_class=3, **FAST)
    assert sorted(p.name for p in out.iterdir()) == [".ltpa-manifest.json", "mine.txt", "probe.json"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "probe.json").write_text("{}")
    with pytest.raises(ValueError, match="not written by ltpa"):
        run_probe(att, f"folder:{folder}", foreign, overwrite=True, train_per_class=3, **FAST)
    assert (foreign / "probe.json").read_text() == "{}"


@pytest.mark.integration
def test_probe_on_the_cub_sample(att, tmp_path):
    if not (CUB / "CUB_200_2011").is_dir():
        pytest.skip(f"real data sample {CUB} is absent (only CI has ../shared/data beside the repository)")
    result = linear_probe(att, f"cub:{CUB}", features="level:conv10", cache_dir=tmp_path, **FAST)
    assert (result.num_train, result.num_test, len(result.class_names)) == (300, 243, 10)
    assert result.class_names[0] == "001.Black_footed_Albatross"
    # random-weight conv10 features still carry colour and texture: clearly above 10% chance
    assert result.ci95[0] > result.chance
