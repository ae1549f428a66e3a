"""Run folders for the report tests: a tiny real run's config, and runs written by hand."""
import json
import shutil

from ltpa.train import TrainConfig

HOSTILE = "<script>alert(1)</script>"


def tiny_config(**changes) -> TrainConfig:
    base = dict(model="vgg_att3", model_options={"width": 0.0625, "dropout": False}, num_classes=4,
                num_train=64, num_test=24, val_fraction=0.25, epochs=2, batch_size=16, eval_batch_size=64,
                lr=0.01, precision="fp32", device="cpu", stuck_warmup_epochs=50, cpu_threads=1,
                tensorboard=False)
    base.update(changes)
    return TrainConfig(**base)


def copy_run(run, target):
    shutil.copytree(run, target)
    return target


def rename_class(run, index: int, name: str) -> None:
    """Give class ``index`` another name everywhere the run records it (classes.json, test report)."""
    classes = json.loads((run / "classes.json").read_text())
    old = classes[index]
    classes[index] = name
    (run / "classes.json").write_text(json.dumps(classes))
    report = json.loads((run / "test_report.json").read_text())
    report["class_names"][index] = name
    for entry in report["per_class"]:
        if entry["class"] == old:
            entry["class"] = name
    (run / "test_report.json").write_text(json.dumps(report))


def write_fake_run(run, *, finished: bool = True, class_names=("cat", "dog", "bird"), val: bool = True,
                   **config_changes):
    """A run folder written by hand (no training, no checkpoint): config, environment, metrics and,
    when ``finished``, final metrics and a test report."""
    run.mkdir(parents=True)
    config = tiny_config(num_classes=len(class_names), val_fraction=0.25 if val else 0.0, epochs=3,
                         **config_changes).to_dict(grouped=True)  # as the trainer writes it
    (run / "config.json").write_text(json.dumps(config))
    (run / "environment.json").write_text(json.dumps({"format": "ltpa-run", "device": "cpu", "torch": "2.x",
                                                      "precision": "fp32", "git_commit": "abc123"}))
    (run / "classes.json").write_text(json.dumps(list(class_names)))
    records = [{"epoch": e, "step": 4 * e, "lr": 0.01, "train_loss": 1.2 - 0.1 * e, "train_acc1": 30.0 + e,
                **({"val_loss": 1.1, "val_acc1": [40.0, 60.0, 60.0][e - 1]} if val else {})}
               for e in ((1, 2, 3) if finished else (1, 2))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        k = len(class_names)
        matrix = [[3 if i == j else (1 if j == (i + 1) % k else 0) for j in range(k)] for i in range(k)]
        (run / "final_metrics.json").write_text(json.dumps({
            "test_weights": "best" if val else "final", "tested_epoch": 2 if val else 3,
            "checkpoint": "checkpoints/best.json" if val else "checkpoints/epoch_0003.json",
            "epochs_completed": 3, "val": {"acc1": 60.0} if val else {},
            "test": {"loss": 0.9, "acc1": 75.0, "samples": 4 * k}}))
        (run / "test_report.json").write_text(json.dumps({
            "samples": 4 * k, "loss": 0.9, "acc1": 75.0, "top1_error": 25.0, "mean_per_class_acc1": 75.0,
            "per_class": [{"index": i, "class": n, "samples": 4, "acc1": 75.0} for i, n in enumerate(class_names)],
            "class_names": list(class_names), "confusion_matrix": matrix}))
    return run
