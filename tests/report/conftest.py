"""A tiny finished run shared by the report tests (a 1/16-width VGG-att3, 2 epochs, seconds)."""
import pytest
from report_helpers import tiny_config

from ltpa.train import fit


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run; tests copy it (``report_helpers.copy_run``) before changing anything in it."""
    run = tmp_path_factory.mktemp("report_runs") / "tiny"
    fit(tiny_config(), run, progress=False)
    return run
