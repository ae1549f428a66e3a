"""The two notebooks in notebooks/, executed top to bottom at tiny settings so that they cannot rot.

They read the real samples in ../shared/data and are skipped, with the reason, where it is absent.
The kernel is this interpreter (a kernel spec written for the test), whatever kernels the machine has.
"""
import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DATA = ROOT.parent / "shared" / "data"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run both notebooks in order (the CUB one fine-tunes the CIFAR-100 one's run)."""
    for sample in (DATA / "cifar100-mini", DATA / "cub200-mini" / "CUB_200_2011"):
        if not sample.is_dir():
            pytest.skip(f"real data sample {sample} is absent (only CI has ../shared/data beside the repository)")
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    work = tmp_path_factory.mktemp("notebooks")
    kernels = work / "jupyter" / "kernels"
    kernels.mkdir(parents=True)
    write_kernel_spec(kernels / "ltpa-test", overrides={"argv": [sys.executable, "-m", "ipykernel_launcher",
                                                                 "-f", "{connection_file}"]})
    runs = work / "runs"
    settings = {"LTPA_NOTEBOOK_TINY": "1", "LTPA_SHARED_DATA": str(DATA), "LTPA_NOTEBOOK_RUNS": str(runs),
                "JUPYTER_PATH": str(work / "jupyter"), "MPLBACKEND": "agg"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    results = {}
    try:
        for name in ("cifar100_attention", "cub_transfer"):
            notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
            started = time.perf_counter()
            NotebookClient(notebook, timeout=900, kernel_name="ltpa-test",
                           resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
            print(f"{name}: {time.perf_counter() - started:.0f} s at tiny settings")
            nbformat.write(notebook, work / f"{name}.executed.ipynb")
            results[name] = notebook
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return results, runs


def _text(notebook) -> str:
    """Everything the notebook's cells printed."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            elif "text/plain" in output.get("data", {}):
                parts.append(output["data"]["text/plain"])
    return "\n".join(parts)


def _images(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_committed_notebooks_have_no_outputs():
    import nbformat

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} was committed with outputs"


def test_cifar100_notebook_trains_draws_and_diagnoses(executed):
    notebooks, runs = executed
    notebook = notebooks["cifar100_attention"]
    text = _text(notebook)
    run = runs / "cifar100"
    final = json.loads((run / "final_metrics.json").read_text())
    assert f"test top-1 {final['test']['acc1']:.1f}%" in text
    assert final["test"]["samples"] == 100  # subset_test at tiny settings
    assert _images(notebook) >= 3  # curves, mass and per-map grids
    assert "Verdict:" in text and "conv10" in text and "shared 'mass' scale" in text
    assert "first level conv10" in text
    assert (run / "report.html").is_file() and str(run / "report.html") in text


def test_cub_notebook_transfers_and_tables_the_parts(executed):
    notebooks, runs = executed
    notebook = notebooks["cub_transfer"]
    text = _text(notebook)
    transfer = json.loads((runs / "cub" / "transfer_report.json").read_text())
    assert transfer["counts"]["loaded"] > 0 and transfer["counts"]["shape_mismatch"] == 0
    assert str(runs / "cifar100") in transfer["source"]
    assert "weight transfer from" in text
    assert "attention/conv10" in text and "attention/conv13" in text and "consistency" in text
    assert _images(notebook) >= 4  # resizing choices, curves, part table, attention
    report = (runs / "cub" / "report.html").read_text(encoding="utf-8")
    assert "transfer_report.txt" in report and "localise/localisation.json" in report
