"""Everything worth measuring when a GPU is lent, in one script of at most about 8 minutes.

Usage:
    python benchmarks/gpu.py [--cifar PATH] [--peak-tflops 790] [--json out.json]
    python benchmarks/gpu.py --tiny     # the same steps, tiny sizes, any device (what the tests run)

Sections, each timed and recorded even when another one fails:

1. tests: the test files that mention CUDA, run by pytest (on a CPU they skip with a reason);
2. throughput: VGG-att3 training at 32x32, the precision ``auto`` picks + channels_last, eager,
   ``torch.compile`` and ``torch.compile(mode="reduce-overhead")`` (CUDA graphs, GPU only), at
   batch 128 and 512, as img/s and as a share of ``--peak-tflops`` (H200 bf16 dense: about 790);
3. trainer: the real ``ltpa.train.fit`` on the CIFAR-100 sample (``--cifar``, the official python
   layout; default ``../shared/data/cifar100-mini`` or ``data/cifar100-mini``) for a few epochs:
   epoch img/s against the model-only img/s of section 2 at the same batch, and the projected
   wall time of the 300-epoch CIFAR-100 recipe (50,000 images an epoch, from the last epoch's
   wall time, evaluation included, scaled by the image count);
4. memory: VGG-att2 at 80 and 224 px, batch 32: peak memory (CUDA) and img/s.

Carry the sample to a lent machine inside the working tree (e.g. copy it to an ignored
``data/cifar100-mini`` and name that path in the device tool's ``carry``); 26 MiB fits.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # benchmarks/ is not a package

from ltpa.train import fit
from ltpa.train.precision import describe_environment, resolve_precision
from ltpa.train.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
CIFAR_EPOCH = 50_000
PAPER_EPOCHS = 300


def _default_cifar() -> str:
    for candidate in (ROOT.parent / "shared" / "data" / "cifar100-mini", ROOT / "data" / "cifar100-mini"):
        if candidate.is_dir():
            return str(candidate)
    return str(ROOT / "data" / "cifar100-mini")


def cuda_tests(args) -> dict:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if "cuda" in p.read_text(encoding="utf-8"))
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files]
    if args.tiny:
        command += ["-k", "cuda"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.tests_timeout)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    print(f"  pytest {' '.join(files)}: {tail} (exit {done.returncode})", flush=True)
    if done.returncode not in (0, 5):  # 5: -k selected nothing, not a failure of the code
        raise RuntimeError(f"CUDA tests failed (exit {done.returncode}): {tail}")
    return {"files": files, "returncode": done.returncode, "summary": tail,
            "seconds": time.perf_counter() - start}


def throughput(args, device, precision, flops_args) -> list[dict]:
    flops = tt.gflop_per_image(flops_args, device)
    variants = [("eager", False, None)]
    if args.compile:
        variants.append(("compile", True, "default"))
        if device.type == "cuda":
            variants.append(("compile + CUDA graphs", True, "reduce-overhead"))
    rows = []
    for batch in args.batches:
        for name, compiled, mode in variants:
            run_args = argparse.Namespace(**{**vars(flops_args), "batch": batch})
            path = tt.Path(run_args, device, name=name, channels_last=True, precision=precision)
            if compiled:
                path.forward = torch.compile(path.model, mode=mode)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = path.time(args.steps, args.warmup, device)
            img_s = batch * args.steps / seconds
            row = {"variant": name, "batch": batch, "img_per_s": img_s, "gflop_per_image": flops,
                   "tflops": img_s * flops / 1e3, "peak_share": img_s * flops / 1e3 / args.peak_tflops}
            if device.type == "cuda":
                row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(row)
            print(f"  {precision.name}+channels_last {name:<22} batch {batch:>4}: {img_s:10.1f} img/s  "
                  f"{row['tflops']:8.2f} TFLOP/s = {100 * row['peak_share']:5.2f}% of {args.peak_tflops:g}",
                  flush=True)
            del path
    return rows


def trainer(args, model_only: dict[int, float]) -> dict:
    config = get_preset("cifar100-vgg-att3")
    overrides = dict(data=f"cifar100:{args.cifar}", epochs=args.epochs, val_fraction=0.1,
                     subset_train=0, subset_test=0, tensorboard=True)
    if args.cifar == "synthetic":  # no sample at hand: the same trainer on generated images
        overrides.update(data="synthetic", num_classes=10, num_train=5000, num_test=1000)
    if args.tiny:
        overrides.update(model_options={"width": args.width}, subset_train=200, subset_test=100,
                         num_train=200, num_test=100,
                         batch_size=args.batches[0], eval_batch_size=64)
    for key, value in overrides.items():
        setattr(config, key, value)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = fit(config.validate(), Path(out) / "run", progress=False)
        wall = time.perf_counter() - start
        epochs = [json.loads(line) for line in result.metrics_path.read_text().splitlines() if line.strip()]
    train_images = len(epochs) and epochs[-1]["step"] // epochs[-1]["epoch"] * config.batch_size
    last = epochs[-1]
    record = {"epochs": len(epochs), "wall_s": wall, "batch": config.batch_size,
              "epoch_img_per_s": [e["images_per_s"] for e in epochs],
              "epoch_seconds": [e["seconds"] for e in epochs], "train_images_per_epoch": train_images,
              "model_only_img_per_s": model_only.get(config.batch_size), "test_acc1": result.test.get("acc1")}
    if record["model_only_img_per_s"]:
        record["epoch_over_model_only"] = last["images_per_s"] / record["model_only_img_per_s"]
    record["projected_300_epochs_min"] = PAPER_EPOCHS * last["seconds"] * CIFAR_EPOCH / train_images / 60
    print(f"  trainer: {len(epochs)} epochs of {train_images} images in {wall:.1f} s; last epoch "
          f"{last['images_per_s']:.1f} img/s (train), {last['seconds']:.1f} s with evaluation; "
          f"model-only {record['model_only_img_per_s'] or float('nan'):.1f} img/s; projected "
          f"{PAPER_EPOCHS} CIFAR-100 epochs: {record['projected_300_epochs_min']:.1f} min", flush=True)
    return record


def memory(args, device, precision) -> list[dict]:
    rows = []
    for size in args.sizes:
        run_args = argparse.Namespace(model="vgg_att2", width=args.width, size=size, batch=args.memory_batch)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        path = tt.Path(run_args, device, name="vgg_att2", channels_last=True, precision=precision)
        seconds = path.time(args.steps, 1, device)
        row = {"size": size, "batch": args.memory_batch, "img_per_s": args.memory_batch * args.steps / seconds}
        if device.type == "cuda":
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
        peak = f", peak {row['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in row else ", peak not measured (CPU)"
        print(f"  vgg_att2 {size}x{size} batch {args.memory_batch}: {row['img_per_s']:.1f} img/s{peak}", flush=True)
        del path
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on any device: checks the script end to end")
    parser.add_argument("--cifar", default=None,
                        help="CIFAR-100 python-layout folder (the sample), or 'synthetic' for generated images")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak")
    parser.add_argument("--epochs", type=int, default=3, help="trainer epochs on the sample")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tests", "throughput", "trainer", "memory"])
    parser.add_argument("--tests-timeout", type=int, default=180)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    args.cifar = args.cifar or _default_cifar()
    if args.tiny:
        args.width, args.batches, args.steps, args.warmup = 0.0625, [4], 1, 1
        args.sizes, args.memory_batch, args.epochs, args.compile = [80, 96], 2, 1, False
    else:
        args.width, args.batches, args.steps, args.warmup = 1.0, [128, 512], 20, 5
        args.sizes, args.memory_batch = [80, 224], 32
    precision = resolve_precision("auto", True, "auto")
    device = precision.device
    environment = describe_environment(precision)
    print(f"CPU {environment['cpu_model']}, ATen capability {environment['cpu_capability']}; "
          f"precision {precision.name} ({environment['precision_choice']}); device {device} "
          f"({environment['device_name']}){' [tiny]' if args.tiny else ''}", flush=True)
    flops_args = argparse.Namespace(model="vgg_att3", width=args.width, size=32, batch=args.batches[0])
    record = {"args": vars(args), "device": str(device), "torch": torch.__version__,
              "cpu_capability": environment["cpu_capability"], "precision": precision.name,
              "environment": environment, "sections": {}}

    def section(name, fn):
        if name in args.skip:
            return None
        print(f"{name}:", flush=True)
        start = time.perf_counter()
        try:
            value = fn()
            record["sections"][name] = {"ok": True, "seconds": time.perf_counter() - start, "result": value}
        except Exception as error:  # one failed section must not lose the others' figures
            traceback.print_exc()
            record["sections"][name] = {"ok": False, "seconds": time.perf_counter() - start,
                                        "error": f"{type(error).__name__}: {error}"}
            value = None
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        return value

    section("tests", lambda: cuda_tests(args))
    rows = section("throughput", lambda: throughput(args, device, precision, flops_args)) or []
    model_only = {r["batch"]: r["img_per_s"] for r in rows if r["variant"] == "eager"}
    section("trainer", lambda: trainer(args, model_only))
    section("memory", lambda: memory(args, device, precision))
    failed = [k for k, v in record["sections"].items() if not v["ok"]]
    print(f"done in {sum(v['seconds'] for v in record['sections'].values()):.1f} s"
          + (f"; failed sections: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
