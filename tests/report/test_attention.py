"""The report's attention pictures and diagnose summary, from a real tiny run's checkpoint."""
import base64
import io

import pytest
import torch
from PIL import Image

from ltpa.attention import compute_maps, explain, summarise_maps
from ltpa.attention.ground_truth import load_evaluation_set
from ltpa.inference import load_trained
from ltpa.report import build_report
from ltpa.report.attention import attention_panel


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_frames_show_correct_and_wrong_predictions_on_every_scale(tiny_run):
    panel = attention_panel(tiny_run / "checkpoints" / "best.json", images=4, pool=24)
    assert panel.pool == 24 and panel.correct + panel.wrong == 24
    kinds = [frame.correct for frame in panel.frames]
    assert len(kinds) == 4
    if panel.correct >= 2 and panel.wrong >= 2:
        assert kinds == [True, True, False, False]
    for frame in panel.frames:
        assert ("correct" if frame.correct else "wrong") in frame.caption
        pictures = [_decode(frame.images[mode]) for mode in ("mass", "shared", "per-map")]
        assert all(p.size[0] > 200 and p.size[1] > 100 for p in pictures)
        assert len({p.tobytes() for p in pictures}) == 3
    assert [lv["name"] for lv in panel.levels] == ["conv7", "conv10", "conv13"]


def test_diagnose_summary_is_the_library_summary_of_the_same_images(tiny_run):
    panel = attention_panel(tiny_run / "checkpoints" / "best.json", images=2, pool=24)
    trained = load_trained(tiny_run / "checkpoints" / "best.json")
    config = trained.config
    images = load_evaluation_set(config.data, image_size=config.image_size, limit=24,
                                 synthetic_defaults={"num_classes": config.num_classes, "seed": config.data_seed,
                                                     "num_test": config.num_test},
                                 resize_mode=config.resize_mode).images
    expected = summarise_maps(compute_maps(trained.model, trained.prepare(images)))
    assert panel.summary == expected
    assert panel.explanation == explain(expected)


def test_the_panel_generates_only_the_synthetic_test_split_it_shows(tiny_run, monkeypatch):
    from ltpa.data import synthetic

    made = []
    real_init = synthetic.SyntheticLocalisation.__init__

    def recording_init(self, num_samples, *args, split="train", **kwargs):
        made.append((split, num_samples))
        real_init(self, num_samples, *args, split=split, **kwargs)

    monkeypatch.setattr(synthetic.SyntheticLocalisation, "__init__", recording_init)
    attention_panel(tiny_run / "checkpoints" / "best.json", images=1, pool=4)
    assert dict(made)["train"] <= 1  # the train split is never read: generating it is wasted time
    assert dict(made)["test"] == load_trained(tiny_run / "checkpoints" / "best.json").config.num_test


def test_bad_counts_are_refused(tiny_run):
    with pytest.raises(ValueError, match="images must be an int >= 1"):
        attention_panel(tiny_run / "checkpoints" / "best.json", images=0)
    with pytest.raises(ValueError, match="pool must be an int >= images"):
        attention_panel(tiny_run / "checkpoints" / "best.json", images=8, pool=4)


def test_unavailable_data_leaves_a_section_that_says_why_and_how(tiny_run, tmp_path):
    text = build_report(tiny_run, tmp_path / "r.html", data="cifar100:/nonexistent/cifar",
                        attention_images=2).read_text(encoding="utf-8")
    attention = text.split('<section id="attention">')[1].split("</section>")[0]
    assert 'class="missing"' in attention and "/nonexistent/cifar" in attention
    assert f"ltpa report {tiny_run} --data" in attention
    assert "No maps to diagnose" in text


def test_pick_takes_half_correct_half_wrong_and_fills_up_from_the_other_kind():
    from ltpa.report.attention import _pick

    correct = torch.tensor([True, False, True, True, False, True])
    assert _pick(correct, 4, 6) == [0, 2, 1, 4]
    assert _pick(torch.tensor([True, True, True, False]), 4, 4) == [0, 1, 2, 3]
    assert _pick(torch.tensor([False, False, True]), 2, 3) == [2, 0]
    assert _pick(None, 3, 5) == [0, 1, 2]
