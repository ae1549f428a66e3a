"""``ltpa report`` and the report that ``ltpa train`` writes at the end of a run."""
import pytest

from ltpa.cli import main

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=48", "--set", "num_test=16",
        "--set", "batch_size=16", "--set", "num_classes=4", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("report_cli") / "run"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 0
    return out


def test_train_ends_with_the_run_report(trained, capsys):
    html = (trained / "report.html").read_text(encoding="utf-8")
    assert "vgg_att3" in html and 'id="attention"' in html


def test_report_command_writes_the_file_it_names(trained, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(trained), "--out", str(out), "--images", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert 'id="attention"' in out.read_text(encoding="utf-8")


def test_report_never_replaces_a_page_it_did_not_write(trained, tmp_path, capsys):
    mine = tmp_path / "mine.html"
    mine.write_text("<html>my page</html>")
    assert main(["report", str(trained), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltpa report: error:") and "Traceback" not in err
    assert mine.read_text() == "<html>my page</html>"
