"""The HTML report: sections, what missing sections say, escaping, self-containment, file safety."""
import html
import importlib.resources
import json
import re
from html.parser import HTMLParser

import pytest
from matplotlib.figure import Figure

from ltpa.report import REPORT_FILE, build_report, collect_run
from ltpa.report.html import SECTIONS

from report_helpers import HOSTILE, write_fake_run


class _Page(HTMLParser):
    """Every tag with its attributes, and the text of each element with an id."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _parse(text):
    page = _Page()
    page.feed(text)
    return page.tags


def _section(text, section_id):
    """The HTML of ``<section id=...>`` (sections do not nest)."""
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', text, flags=re.S)
    assert match, f"section {section_id!r} missing"
    return match.group(1)


def _references(tags):
    return [(tag, key, value) for tag, attrs in tags for key, value in attrs.items()
            if key in ("src", "href", "action", "data", "poster", "srcset") and value is not None]


def test_template_is_installed_as_package_data():
    template = importlib.resources.files("ltpa.report").joinpath("templates/report.html.j2")
    assert template.is_file() and "<html" in template.read_text(encoding="utf-8")


def test_finished_run_report_shows_every_section_and_references_nothing_outside(tiny_run, tmp_path):
    out = build_report(tiny_run, tmp_path / "r.html", attention_images=4, attention_pool=24)
    text = out.read_text(encoding="utf-8")
    tags = _parse(text)
    ids = [attrs.get("id") for _, attrs in tags]
    for section_id, _ in SECTIONS:
        assert section_id in ids
    for tag, key, value in _references(tags):
        assert value.startswith("data:image/") or value.startswith("#"), (tag, key, value[:80])
    assert 'class="status finished"' in text
    assert "data:image/svg+xml;base64," in _section(text, "curves")
    assert "data:image/png;base64," in _section(text, "confusion")
    assert "Why this epoch:" in _section(text, "final-metrics")
    frames = json.loads(html.unescape(re.search(
        r'<script type="application/json" id="attention-frames">(.*?)</script>', text, flags=re.S).group(1)))
    assert 1 <= len(frames) <= 4
    for frame in frames:
        assert set(frame["images"]) == {"mass", "shared", "per-map"}
        assert len(set(frame["images"].values())) == 3  # each scale is its own picture
    diagnose = _section(text, "diagnose")
    assert "Verdict:" in diagnose and "conv7" in diagnose
    for section_id in ("config", "environment", "curves", "final-metrics", "per-class", "confusion",
                       "attention", "diagnose"):
        assert 'class="missing"' not in _section(text, section_id), section_id


def test_strings_from_the_run_are_escaped(tmp_path):
    run = write_fake_run(tmp_path / "run<i>x</i>", class_names=(HOSTILE, "dog & cat", 'say "hi"'),
                         data="synthetic", seed=3)
    config = json.loads((run / "config.json").read_text())
    config["optimisation"]["init"] = "<img src=x onerror=alert(2)>"
    (run / "config.json").write_text(json.dumps(config))
    text = build_report(run).read_text(encoding="utf-8")
    assert HOSTILE not in text and "<img src=x" not in text and "<i>x</i>" not in text
    assert html.escape(HOSTILE, quote=False) in _section(text, "per-class")
    assert "&lt;img src=x onerror=alert(2)&gt;" in _section(text, "config")
    # Only the report's own scripts: the attention viewer is missing here (no checkpoint).
    assert len(re.findall(r"<script\b", text)) == 0
    assert all(tag != "img" or attrs["src"].startswith("data:") for tag, attrs in _parse(text))


def test_still_training_run_is_labelled_and_missing_sections_say_how(tmp_path):
    run = write_fake_run(tmp_path / "run", finished=False)
    text = build_report(run).read_text(encoding="utf-8")
    assert "STILL TRAINING" in text and 'class="status running"' in text
    assert "2 of 3 epochs" in text
    final = _section(text, "final-metrics")
    assert 'class="missing"' in final and f"ltpa train --resume --out {run}" in final
    assert f"ltpa eval {run}/checkpoints/best.json" in _section(text, "per-class")
    assert "No checkpoint yet" in _section(text, "attention") or "holds no checkpoint" in _section(text, "attention")
    assert f"ltpa diagnose {run}/checkpoints/best.json" in _section(text, "diagnose")
    assert f"ltpa localise {run}/checkpoints/best.json --out {run}/localise" in _section(text, "localise")
    assert "ltpa sanity" in _section(text, "sanity")
    assert "trained from scratch" in _section(text, "transfer")
    assert "data:image/svg+xml" in _section(text, "curves")  # what exists so far is shown


def test_why_the_tested_epoch_was_chosen(tmp_path):
    best = build_report(write_fake_run(tmp_path / "best")).read_text(encoding="utf-8")
    assert "the weights of epoch 2, the epoch with the highest validation top-1 accuracy (60.00%)" in best
    final = build_report(write_fake_run(tmp_path / "final", val=False)).read_text(encoding="utf-8")
    assert "no validation split (val_fraction=0)" in final and "epoch 3" in _section(final, "final-metrics")


def test_config_in_sections_and_an_earlier_flat_config_read_the_same(tmp_path):
    grouped = collect_run(write_fake_run(tmp_path / "grouped", seed=7))
    flat_run = write_fake_run(tmp_path / "flat", seed=7)
    sections = json.loads((flat_run / "config.json").read_text())
    (flat_run / "config.json").write_text(json.dumps({k: v for s in sections.values() for k, v in s.items()}))
    flat = collect_run(flat_run)
    assert grouped.config == flat.config and grouped.config["seed"] == 7 and grouped.config["model"] == "vgg_att3"
    text = build_report(tmp_path / "grouped").read_text(encoding="utf-8")
    assert re.search(r"seed.{0,80}7", _section(text, "config"), re.S)


def test_localise_sanity_and_transfer_results_are_shown(tmp_path):
    run = write_fake_run(tmp_path / "run", init="runs/source")
    (run / "localise").mkdir()
    (run / "localise" / "localisation.json").write_text(json.dumps({
        "num_images": 16, "region": "box", "tolerance": 0.0, "accuracy": 0.5,
        "rows": {"attention/conv13": {"method": "attention", "level": "conv13", "kind": "learned",
                                      "pointing": 0.8125, "energy": 0.25, "peak_on_part": "beak"}}}))
    (run / "localise" / "diagnostics.txt").write_text("conv13 verdict: focused\n")
    figure = Figure(figsize=(1, 1))
    figure.savefig(run / "localise" / "parts.png")
    (run / "sanity").mkdir()
    (run / "sanity" / "sanity.json").write_text(json.dumps({
        "checkpoint": "x.json", "explanation": "conv7 barely changes when the trunk is randomised: " + "x" * 80,
        "stages": {"head": {"spearman": 0.9}, "trunk": {"spearman": 0.1}}, "similarities": ["spearman"],
        "cascading": [{"stage": "trunk.conv13", "randomised": ["head", "trunk.conv13"],
                       "similarity": {"attention/conv7": {"spearman": {"mean": 0.934, "std": 0.1}}}}]}))
    (run / "transfer_report.json").write_text(json.dumps({
        "source": "runs/source/checkpoints/epoch_0001.json", "source_format": "ltpa", "patterns": ["trunk.*"],
        "counts": {"loaded": 40, "skipped": 2}, "notes": [], "entries": []}))
    (run / "transfer_report.txt").write_text("weight transfer from runs/source (format: ltpa)\n")
    text = build_report(run).read_text(encoding="utf-8")
    localise = _section(text, "localise")
    assert "localise/localisation.json" in localise and "0.812" in localise and "beak" in localise
    assert "data:image/png;base64," in localise and "conv13 verdict: focused" in localise
    sanity = _section(text, "sanity")
    assert "barely changes when the trunk is randomised" in sanity and "0.1" in sanity and "spearman" in sanity
    assert "cascading randomisation: spearman" in sanity and "trunk.conv13" in sanity and "0.93" in sanity
    transfer = _section(text, "transfer")
    assert "runs/source/checkpoints/epoch_0001.json" in transfer and "40" in transfer
    assert "weight transfer from runs/source" in transfer
    for section_id in ("localise", "sanity", "transfer"):
        assert 'class="missing"' not in _section(text, section_id)


def test_demo_scores_are_shown_as_localisation(tmp_path):
    run = write_fake_run(tmp_path / "run")
    (run / "localisation.json").write_text(json.dumps({
        "num_images": 100, "region": "mask", "levels": {"conv7": {"pointing": 0.64, "energy": 0.05}},
        "baselines": {"centre": {"pointing": 0.16, "energy": 0.078}}}))
    localise = _section(build_report(run).read_text(encoding="utf-8"), "localise")
    assert "conv7" in localise and "0.640" in localise and "(centre)" in localise and "0.160" in localise
    assert "within" not in localise  # a demo folder from before the tolerance column
    (run / "localisation.json").write_text(json.dumps({
        "num_images": 100, "region": "mask", "near": 2.142857,
        "levels": {"conv7": {"pointing": 0.64, "pointing_near": 0.912, "energy": 0.05}},
        "baselines": {"centre": {"pointing": 0.16, "pointing_near": 0.334, "energy": 0.078}}}))
    localise = _section(build_report(run).read_text(encoding="utf-8"), "localise")
    assert "pointing within 2.1 px" in localise and "0.912" in localise and "0.334" in localise


def test_existing_files_are_replaced_only_when_a_report_wrote_them(tmp_path):
    run = write_fake_run(tmp_path / "run")
    foreign = run / REPORT_FILE
    foreign.write_text("<html>my notes</html>")
    with pytest.raises(ValueError, match="not written by ltpa"):
        build_report(run)
    assert foreign.read_text() == "<html>my notes</html>"
    own = build_report(run, tmp_path / "mine.html")
    first = own.read_text(encoding="utf-8")
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"epoch": 4, "train_loss": 0.5}\n')
    assert build_report(run, own) == own and own.read_text(encoding="utf-8") != first
    with pytest.raises(ValueError, match="ending in .html"):
        build_report(run, tmp_path / "report.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(run, tmp_path / "no" / "report.html")
    assert not (tmp_path / "report.txt").exists()


def test_bad_image_counts_are_refused_before_anything_is_written(tmp_path):
    run = write_fake_run(tmp_path / "run")
    with pytest.raises(ValueError, match="attention_images must be an int >= 1, got 0"):
        build_report(run, attention_images=0)
    with pytest.raises(ValueError, match="attention_pool must be an int >= 8, got 4"):
        build_report(run, attention_pool=4)
    assert not (run / REPORT_FILE).exists()


def test_folders_that_hold_no_run_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no ltpa run"):
        build_report(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_half_written_metrics_line_is_skipped_with_a_note(tmp_path):
    run = write_fake_run(tmp_path / "run", finished=False)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "train_lo')
    data = collect_run(run)
    assert [r["epoch"] for r in data.metrics] == [1, 2]
    assert any("metrics.jsonl: 1 line" in note for note in data.notes)
    assert "metrics.jsonl: 1 line" in build_report(run).read_text(encoding="utf-8")
