"""Two `ltpa train` on the same folder: the second fails at once, naming the first, and the
first is unharmed (it then stops on SIGTERM with a checkpoint, exit 143)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ltpa.cli import main

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=64", "--set", "num_test=16",
        "--set", "batch_size=16", "--set", "num_classes=4", "--set", "tensorboard=false",
        "--set", "cpu_threads=1", "--set", "device=cpu", "--set", "precision=fp32",
        "--set", "stuck_warmup_epochs=1000", "--no-progress"]


@pytest.mark.slow
def test_a_second_writer_fails_at_once_and_the_first_is_unharmed(tmp_path, capsys):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "ltpa", "-q", "train", "--out", str(run), *TINY,
                              "--epochs", "1000"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.jsonl").exists():  # the first epoch is done: it is writing
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.2)
        config = (run / "config.json").read_bytes()
        capsys.readouterr()
        for argv in ([*TINY, "--epochs", "3", "--overwrite"], ["--resume", "--no-progress"]):
            started = time.monotonic()
            assert main(["-q", "train", "--out", str(run), *argv]) == 2
            err = capsys.readouterr().err
            assert f"is being written by another ltpa process (pid {first.pid} on" in err, err
            assert "ltpa train" in err and err.count("\n") == 1
            assert time.monotonic() - started < 60  # at once: no waiting for the lock
        assert (run / "config.json").read_bytes() == config
        assert first.poll() is None  # still training
        manifest = json.loads((run / ".ltpa-manifest.json").read_text())
        assert manifest["kind"] == "run"
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=300)
    assert first.returncode == 143, err
    assert "stopped by SIGTERM: saved" in err
    assert not (run / ".ltpa.lock").exists()  # released
