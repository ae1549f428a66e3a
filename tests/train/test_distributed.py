"""Two gloo processes on the CPU, launched by torchrun, train one run together."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from ltpa.train import TrainConfig, build_data, evaluate_checkpoint, load_checkpoint
from ltpa.train.data_setup import BatchLoader
from ltpa.train.distributed import DistInfo, read_dist_env

# 13 test images do not divide over two ranks, so exact counting is checked.
CONFIG = dict(model="vgg_att3", model_options={"width": 0.0625}, num_classes=4, num_train=40,
              num_test=13, val_fraction=0.25, epochs=2, batch_size=8, eval_batch_size=4,
              lr=0.01, precision="fp32", device="cpu", cpu_threads=1, log_every=1,
              stuck_warmup_epochs=50, test_weights="final")

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    from ltpa.train import TrainConfig, fit

    result = fit(TrainConfig.from_dict(json.loads(sys.argv[2])), sys.argv[1], progress=False)
    rank = os.environ["RANK"]
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, os.path.join(sys.argv[3], f"rank{rank}.safetensors"))
    with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w") as f:
        json.dump(result.test, f)
""")


@pytest.mark.distributed
def test_two_gloo_processes_train_identical_weights_and_count_every_test_image(tmp_path):
    run, outputs = tmp_path / "run", tmp_path / "outputs"
    outputs.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(script), str(run), json.dumps(TrainConfig(**CONFIG).to_dict()), str(outputs)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)  # hang guard
    assert proc.returncode == 0, proc.stderr[-3000:]

    rank0, rank1 = load_file(outputs / "rank0.safetensors"), load_file(outputs / "rank1.safetensors")
    final = load_checkpoint(run / "checkpoints" / "epoch_0002")
    assert rank0.keys() == rank1.keys() == final.model_state.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], final.model_state[key]), key
    per_rank = len(build_data(TrainConfig(**CONFIG)).train_targets) // 2
    assert final.step == 2 * (per_rank // 4)  # global batch 8 = 4 per rank, drop_last

    tests = [json.loads((outputs / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert tests[0] == tests[1] and tests[0]["samples"] == 13
    # the sharded, all-reduced test accuracy equals a single-process evaluation
    single = evaluate_checkpoint(run / "checkpoints" / "epoch_0002", device="cpu")
    assert single["samples"] == 13 and single["acc1"] == pytest.approx(tests[0]["acc1"])
    assert single["loss"] == pytest.approx(tests[0]["loss"], rel=1e-5)
    environment = json.loads((run / "environment.json").read_text())
    assert environment["world_size"] == 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("rank")) == []
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 wrote once


def test_evaluation_shards_cover_every_sample_once_and_training_shards_pad_evenly():
    images = torch.zeros(13, 3, 2, 2, dtype=torch.uint8)
    targets = torch.arange(13)
    common = dict(batch_size=4, mean=(0.0,) * 3, std=(1.0,) * 3, device="cpu", world_size=3)
    seen = torch.cat([t for r in range(3) for _, t in BatchLoader(images, targets, rank=r, **common)])
    assert sorted(seen.tolist()) == list(range(13))
    train = [BatchLoader(images, targets, rank=r, shuffle=True, **common) for r in range(3)]
    for loader in train:
        loader.set_epoch(1)
    lengths = {len(loader) for loader in train}
    assert lengths == {2}  # 13 images -> 5 per rank (2 repeated), batches of 4
    drawn = torch.cat([t for loader in train for _, t in loader])
    assert set(drawn.tolist()) == set(range(13)) and len(drawn) == 15


def test_torchrun_environment_is_read_without_touching_globals():
    assert read_dist_env("cpu", env={}) == DistInfo(device=torch.device("cpu"))
    info = read_dist_env("auto", env={"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (1, 2, False, True)
    with pytest.raises(ValueError, match="incomplete torchrun environment"):
        read_dist_env("cpu", env={"RANK": "0"})
    assert not torch.distributed.is_initialized()
