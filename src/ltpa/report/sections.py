"""What each section of the report shows, as plain dicts for the template, from a
:class:`~ltpa.report.collect.RunData`. A section whose files are missing gets ``missing``: why,
and the exact command that produces them.
"""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from ltpa.report.collect import RunData

__all__ = ["missing_section", "config_section", "environment_section", "final_section", "per_class_section",
           "localise_sections", "sanity_sections", "transfer_section", "commands", "SANITY_COMMAND"]

# ``ltpa sanity`` (issue 11) writes sanity.json; the report reads it from the run folder or a
# subfolder of it.
SANITY_COMMAND = "ltpa sanity {checkpoint} --out {run}/sanity"
_RAW_JSON_CHARS = 20000


def missing_section(why: str, *commands: str) -> dict[str, Any]:
    """A missing section: ``why`` in words and the commands that produce what it needs."""
    return {"why": why, "commands": list(commands)}


def commands(run: RunData) -> dict[str, str]:
    """Shell-quoted paths of the run for the commands the report suggests."""
    run_q = shlex.quote(str(run.run_dir))
    ckpt = run.checkpoint if run.checkpoint is not None else run.run_dir / "checkpoints" / "best.json"
    return {"run": run_q, "checkpoint": shlex.quote(str(ckpt))}


def fmt(value: Any) -> str:
    """A config / environment value in one line (JSON for lists and dicts, floats trimmed)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return "—" if value is None else str(value)


def _number(value: Any, digits: int = 2, suffix: str = "") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}{suffix}"
    return "—"


def config_section(run: RunData) -> dict[str, Any]:
    """``highlights`` (the settings that define the run) and ``rows`` (all of config.json)."""
    if not run.config:
        return {"missing": missing_section("config.json is missing: the run never started, or the folder was copied "
                                   "without it.", "ltpa train --out " + commands(run)["run"] + " ...")}
    c = run.config
    keys = ("model", "model_options", "data", "image_size", "num_classes", "epochs", "batch_size", "lr",
            "precision", "seed", "init", "test_weights")
    return {"highlights": [(k, fmt(c.get(k))) for k in keys if k in c],
            "rows": [(k, fmt(v)) for k, v in c.items()]}


_CAPABILITY_KEYS = ("cpu_capability", "aten_cpu_capability", "cpu_capabilities")
_CPU_NAME_KEYS = ("cpu_model", "cpu_name", "cpu")
_BF16_KEYS = ("cpu_native_bf16", "native_bf16", "cpu_bf16")


def _first(env: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        if env.get(key) not in (None, ""):
            return fmt(env[key])
    return "not recorded"


def environment_section(run: RunData) -> dict[str, Any]:
    """``summary`` (device, CPU capability, precision, versions, commit; "not recorded" where the
    run predates a field), ``rows`` (all of environment.json) and ``resumed`` sessions."""
    env = run.environment
    if not env:
        return {"missing": missing_section("environment.json is missing: the run was not written by `ltpa train` "
                                   "(or the folder was copied without it).")}
    device = env.get("device", "")
    summary = [
        ("device", f"{device} ({env.get('device_name', 'name not recorded')})" if device else "not recorded"),
        ("CPU capability", _first(env, _CAPABILITY_KEYS)),
        ("CPU model", _first(env, _CPU_NAME_KEYS)),
        ("native bf16", _first(env, _BF16_KEYS)),
        ("precision", f"{fmt(env.get('precision'))}, channels_last {fmt(env.get('channels_last'))}"),
        ("threads / processes", f"{fmt(env.get('torch_threads'))} / {fmt(env.get('world_size'))}"),
        ("versions", ", ".join(f"{k} {env[k]}" for k in ("ltpa", "torch", "numpy", "python", "cuda")
                               if env.get(k))),
        ("git commit", _first(env, ("git_commit",))),
        ("started", fmt(env.get("time"))),
    ]
    resumed = env.get("resumed") if isinstance(env.get("resumed"), list) else []
    return {"summary": summary,
            "rows": [(k, fmt(v)) for k, v in env.items() if k != "resumed"],
            "resumed": [[fmt(r.get(k)) for k in ("time", "device", "precision", "git_commit")]
                        for r in resumed if isinstance(r, dict)]}


def _best_val_epoch(metrics: list[dict[str, Any]]) -> tuple[int, float] | None:
    best = None
    for record in metrics:
        value = record.get("val_acc1")
        if isinstance(value, (int, float)) and (best is None or value > best[1]):
            best = (record["epoch"], float(value))  # ties keep the earlier epoch, as fit does
    return best


def _why_tested(run: RunData) -> str:
    final, config = run.final or {}, run.config or {}
    weights, epoch = final.get("test_weights"), final.get("tested_epoch")
    setting = config.get("test_weights", "auto")
    epochs = len(run.metrics)
    best = _best_val_epoch(run.metrics)
    if weights == "best":
        text = (f"the weights of epoch {epoch}, the epoch with the highest validation top-1 accuracy"
                + (f" ({best[1]:.2f}%)" if best and best[0] == epoch else "")
                + f" of the {epochs} recorded epochs (test_weights={setting}; ties keep the earlier epoch)")
        if best and best[0] != epoch:
            text += (f". Note: metrics.jsonl now has its best validation accuracy at epoch {best[0]} "
                     f"({best[1]:.2f}%), so the folder changed after the test")
        return text
    if weights == "final":
        if setting == "final":
            return f"the last epoch's weights (epoch {epoch}), as test_weights=final asks"
        if best is None:
            return (f"the last epoch's weights (epoch {epoch}): the run has no validation split "
                    f"(val_fraction={fmt(config.get('val_fraction'))}), so test_weights={setting} "
                    "cannot pick a best epoch")
        return f"the last epoch's weights (epoch {epoch}): no best checkpoint was found"
    return f"test_weights={fmt(weights)}, epoch {fmt(epoch)}"


def final_section(run: RunData) -> dict[str, Any]:
    """``rows`` of test metrics and ``why``: which weights were tested and why that epoch."""
    cmd = commands(run)
    if run.final is None:
        last = run.metrics[-1]["epoch"] if run.metrics else 0
        planned = (run.config or {}).get("epochs", "?")
        return {"missing": missing_section(
            f"No final_metrics.json: the run is still training or stopped early ({last} of {planned} "
            "epochs recorded). The test set is evaluated once, after the last epoch.",
            f"ltpa train --resume --out {cmd['run']}",
            f"ltpa eval {cmd['checkpoint']}")}
    test = run.final.get("test", {}) if isinstance(run.final.get("test"), dict) else {}
    val = run.final.get("val", {}) if isinstance(run.final.get("val"), dict) else {}
    rows = [("test top-1 accuracy", _number(test.get("acc1"), 2, "%")),
            ("test top-5 accuracy", _number(test.get("acc5"), 2, "%")),
            ("test loss", _number(test.get("loss"), 4)),
            ("test images", fmt(test.get("samples"))),
            ("validation top-1 of those weights", _number(val.get("acc1"), 2, "%")),
            ("tested weights", f"{fmt(run.final.get('test_weights'))}, epoch {fmt(run.final.get('tested_epoch'))} "
                               f"({fmt(run.final.get('checkpoint'))})"),
            ("epochs", fmt(run.final.get("epochs_completed")))]
    if run.test_report and run.test_report.get("mean_per_class_acc1") is not None:
        rows.insert(4, ("mean per-class top-1", _number(run.test_report["mean_per_class_acc1"], 2, "%")))
    return {"rows": rows, "why": _why_tested(run)}


def per_class_section(run: RunData, limit_pairs: int = 10) -> dict[str, Any]:
    """Per-class ``rows`` (lowest accuracy first), the most frequent confusion ``pairs``, and the
    ``matrix`` with its class ``names`` for the heat map."""
    report = run.test_report
    if not report or not isinstance(report.get("per_class"), list):
        cmd = commands(run)
        why = ("No test_report.json yet: it is written with final_metrics.json after the last epoch."
               if run.final is None else "This run has no test_report.json (an older run folder).")
        return {"missing": missing_section(why, f"ltpa eval {cmd['checkpoint']}")}
    classes = [c for c in report["per_class"] if isinstance(c, dict)]
    ranked = sorted(classes, key=lambda c: (c.get("acc1") is None, c.get("acc1") or 0.0))
    rows = [(fmt(c.get("class")), fmt(c.get("samples")), _number(c.get("acc1"), 1, "%")) for c in ranked]
    names = [str(n) for n in report.get("class_names", [])]
    matrix = report.get("confusion_matrix") or []
    pairs = []
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if i != j and count:
                pairs.append((count, names[i] if i < len(names) else str(i), names[j] if j < len(names) else str(j)))
    pairs.sort(key=lambda p: -p[0])
    return {"rows": rows, "pairs": [(t, p, str(n)) for n, t, p in pairs[:limit_pairs]],
            "matrix": matrix if matrix and len(matrix) == len(names) else None, "names": names}


def _rel(run: RunData, path: Path) -> str:
    try:
        return str(path.relative_to(run.run_dir))
    except ValueError:
        return str(path)


def _localise_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    if isinstance(data.get("rows"), dict):  # `ltpa localise`
        from ltpa.attention.report import CSV_COLUMNS

        rows = [r for r in data["rows"].values() if isinstance(r, dict)]
        columns = [c for c in CSV_COLUMNS[3:] if any(c in r for r in rows)]
        table = [[f"{r.get('method', '')}" + (f"/{r['level']}" if r.get("level") else ""), fmt(r.get("kind")),
                  *(_number(r.get(c), 3) if not isinstance(r.get(c), str) else r[c] for c in columns)]
                 for r in rows]
        return ["method/level", "kind", *columns], table
    table = []  # the demo's scores: {"levels": {...}, "baselines": {...}}, "pointing_near" with "near"
    near = data.get("near")
    columns = ["pointing", *(["pointing_near"] if near is not None else []), "energy"]
    for group in ("levels", "baselines"):
        for name, scores in (data.get(group) or {}).items():
            label = name if group == "levels" else f"({name})"
            table.append([label, "learned attention" if group == "levels" else "baseline",
                          *(_number(scores.get(c), 3) for c in columns)])
    names = {"pointing_near": f"pointing within {_number(near, 1)} px"}
    return ["method/level", "kind", *(names.get(c, c) for c in columns)], table


def localise_sections(run: RunData) -> list[dict[str, Any]]:
    """One entry per localisation.json found, with its table, figures and diagnostics text."""
    from ltpa.report.figures import file_uri

    entries = []
    for found in run.localisations:
        header, table = _localise_rows(found.data)
        info = [(k, fmt(found.data.get(k))) for k in ("num_images", "region", "tolerance", "near", "accuracy",
                                                       "faithfulness_images", "cam_layer") if k in found.data]
        entries.append({"path": _rel(run, found.path), "info": info, "header": header, "table": table,
                        "figures": [(name, file_uri(path)) for name, path in found.figures.items()],
                        "texts": list(found.texts.items())})
    return entries


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _generic_tables(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ``{row: {column: scalar}}`` dict of ``data`` (one level deep) as a table."""
    tables = []
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(c for v in value.values() for c, x in v.items() if _scalar(x)))
            if columns:
                tables.append({"title": key, "header": ["", *columns],
                               "rows": [[str(r), *(fmt(v.get(c)) for c in columns)] for r, v in value.items()]})
    return tables


def _stage_tables(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``ltpa sanity``'s stages as tables: per mode and similarity, stages x maps of mean values."""
    tables = []
    metrics = [m for m in data.get("similarities", []) if isinstance(m, str)]
    for mode in ("cascading", "independent"):
        stages = [st for st in data.get(mode) or [] if isinstance(st, dict) and isinstance(st.get("similarity"), dict)]
        if not stages:
            continue
        sources = list(dict.fromkeys(src for st in stages for src in st["similarity"]))
        for metric in metrics:
            rows = [[str(st.get("stage", "?")),
                     *(_number(((st["similarity"].get(src) or {}).get(metric) or {}).get("mean"), 2)
                       for src in sources)] for st in stages]
            tables.append({"title": f"{mode} randomisation: {metric} (mean over images) against the trained maps",
                           "header": ["stage", *sources], "rows": rows})
    return tables


def sanity_sections(run: RunData) -> list[dict[str, Any]]:
    """One entry per sanity.json found: its words, scalar fields, tables, figures and raw JSON."""
    from ltpa.report.figures import file_uri

    entries = []
    for found in run.sanity:
        data = found.data
        words = [(k, v) for k, v in data.items() if isinstance(v, str) and ("\n" in v or len(v) > 80)]
        scalars = [(k, fmt(v)) for k, v in data.items() if _scalar(v) and (k, v) not in words]
        raw = json.dumps(data, indent=1, sort_keys=True)
        entries.append({"path": _rel(run, found.path), "words": words, "scalars": scalars,
                        "tables": _stage_tables(data) + _generic_tables(data),
                        "figures": [(name, file_uri(path)) for name, path in found.figures.items()],
                        "texts": list(found.texts.items()),
                        "raw": raw[:_RAW_JSON_CHARS] + ("\n..." if len(raw) > _RAW_JSON_CHARS else "")})
    return entries


def transfer_section(run: RunData) -> dict[str, Any]:
    """What ``config.init`` loaded: source, patterns, counts per status and the text table."""
    init = (run.config or {}).get("init")
    if run.transfer is None and run.transfer_text is None:
        if init:
            return {"missing": missing_section(f"config init={init!r}, yet transfer_report.json is missing; the run "
                                       "stopped before its weights were loaded.")}
        return {"missing": missing_section(
            "This run was trained from scratch (config init is empty), so nothing was transferred. A "
            "fine-tuned run shows here which tensors it loaded, skipped or re-initialised.",
            f"ltpa train --preset cub-vgg-att2 --init {commands(run)['run']} --data cub:PATH --out RUN2")}
    transfer = run.transfer or {}
    counts = transfer.get("counts") if isinstance(transfer.get("counts"), dict) else {}
    return {"source": fmt(transfer.get("source", init)), "format": fmt(transfer.get("source_format")),
            "patterns": ", ".join(str(p) for p in transfer.get("patterns", [])),
            "counts": [(k, fmt(v)) for k, v in counts.items()], "notes": transfer.get("notes", []),
            "text": run.transfer_text}
