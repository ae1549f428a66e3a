"""A run killed with SIGKILL mid-epoch resumes to exactly the weights of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ltpa.train import TrainConfig, fit, list_checkpoints, load_checkpoint

# The tiny model of the brief (create_model("vgg_att3", num_classes=4, width=0.0625)) with
# dropout, flips and crops on, so that the resumed run must restore every RNG stream.
CONFIG = dict(model="vgg_att3", model_options={"width": 0.0625}, num_classes=4, num_train=48,
              num_test=8, val_fraction=0.25, batch_size=12, eval_batch_size=64, lr=0.01,
              precision="fp32", device="cpu", deterministic=True, cpu_threads=1, log_every=1,
              stuck_warmup_epochs=50, tensorboard=True)

KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from ltpa.train import TrainConfig, fit, data_setup
    from ltpa.runs import checkpoints as checkpoint

    config = TrainConfig.from_dict({config!r})
    where = sys.argv[2]
    iterate = data_setup.BatchLoader.__iter__

    def iterate_then_die(self):
        for i, batch in enumerate(iterate(self)):
            if where == "mid-epoch" and self.name == "train" and self.epoch == 2 and i == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # after one optimizer step of epoch 2
            yield batch

    replace = os.replace
    calls = []

    def replace_then_die(src, dst):  # dies between the tensors and the sidecar of epoch 2
        calls.append(str(dst))
        if where == "mid-save" and str(dst).endswith("epoch_0002.safetensors"):
            replace(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst)

    data_setup.BatchLoader.__iter__ = iterate_then_die
    checkpoint.os.replace = replace_then_die
    fit(config, sys.argv[1], progress=False)
""")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    fit(TrainConfig(**CONFIG, epochs=3), run, progress=False)
    return load_checkpoint(run / "checkpoints" / "epoch_0003")


@pytest.mark.parametrize("where", ["mid-epoch", "mid-save"])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path, uninterrupted, where):
    run = tmp_path / "run"
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(config=TrainConfig(**CONFIG, epochs=3).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(run), where], env=env,
                          capture_output=True, text=True, timeout=600)  # a hang guard only
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [epoch for epoch, _ in list_checkpoints(run / "checkpoints")] == [1]
    assert not (run / "final_metrics.json").exists()

    result = fit(TrainConfig(**CONFIG, epochs=3), run, resume=True, progress=False)
    resumed = load_checkpoint(run / "checkpoints" / "epoch_0003")
    assert (resumed.epoch, resumed.step) == (uninterrupted.epoch, uninterrupted.step)
    for key, value in uninterrupted.model_state.items():
        assert torch.equal(value, resumed.model_state[key]), key
    assert result.epochs_completed == 3
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # no duplicate line for the epoch that was cut short
    assert not list((run / "checkpoints").glob(".*.tmp"))
