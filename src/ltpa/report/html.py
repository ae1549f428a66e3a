"""``build_report``: one self-contained HTML file from a run folder.

Everything is inside the file: pictures are ``data:`` URIs, the style and the small script
that switches the attention pictures are inline, and a Content-Security-Policy forbids the page
any other request. Every string from the run (class names, paths, config values) goes through
Jinja2's autoescaping; data handed to the script is JSON via ``tojson``.
"""
from __future__ import annotations

import logging
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from ltpa._files import atomic_write_bytes
from ltpa.attention import DISPLAY_MODES
from ltpa.report import sections
from ltpa.report.collect import RunData, collect_run
from ltpa.report.figures import confusion_figure, curves_figure, figure_uri
from ltpa.runs.ownership import check_output_file, marker_recogniser

__all__ = ["REPORT_FILE", "SECTIONS", "build_report", "render_report"]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
GENERATOR = "ltpa report"  # in a <meta name="generator">: marks a file this module may replace
SECTIONS = (
    ("config", "Configuration"), ("environment", "Environment"), ("curves", "Training curves"),
    ("final-metrics", "Final metrics"), ("per-class", "Per-class accuracy"),
    ("confusion", "Confusion matrix"), ("attention", "Attention maps"), ("diagnose", "Diagnose"),
    ("localise", "Localisation"), ("sanity", "Sanity checks"), ("transfer", "Transfer"),
    ("log", "Training log"),
)
SCALE_NOTES = {
    "mass": "mass: attention mass per input pixel on one colour scale shared by all levels of the image "
            "(colour bar on the right). A level that spreads its unit mass over many input pixels (a broad "
            "map, or a coarse level whose cells cover stride x stride pixels each) looks faint.",
    "shared": "shared: all levels of the image min-max scaled together to [0, 1]; relative differences "
              "between levels survive, absolute values do not.",
    "per-map": "per-map: each map stretched to its own [0, 1]; every level looks as peaked as it can, so "
               "differences of spread between levels are hidden.",
}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("ltpa.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def _status(run: RunData) -> dict[str, Any]:
    done = len(run.metrics)
    planned = (run.config or {}).get("epochs", "?")
    if run.finished:
        return {"finished": True, "text": f"Finished: {done} epoch(s) recorded, tested once at the end."}
    last = f"last recorded epoch {run.metrics[-1]['epoch']}" if run.metrics else "no epoch finished yet"
    return {"finished": False,
            "text": f"STILL TRAINING (or stopped before the end): this report shows what exists so far, "
                    f"{done} of {planned} epochs ({last}). No test results yet; rebuild it with "
                    f"`ltpa report {sections.commands(run)['run']}` when the run has finished."}


def _attention(run: RunData, *, data: str | None, images: int, pool: int) -> dict[str, Any]:
    from ltpa.report.attention import attention_panel

    cmd = sections.commands(run)
    if run.checkpoint is None:
        why = ("No checkpoint yet: the first epoch has not finished." if not run.metrics
               else "The run folder holds no checkpoint (checkpoints/ is missing or empty).")
        return {"missing": sections.missing_section(why, f"ltpa train --resume --out {cmd['run']}")}
    try:
        panel = attention_panel(run.checkpoint, data=data, images=images, pool=pool)
    except (ValueError, TypeError, OSError) as err:
        logger.warning("report: no attention maps for %s: %s", run.run_dir, err)
        spec = data or (run.config or {}).get("data", "SPEC")
        return {"missing": sections.missing_section(
            f"The maps could not be computed from {run.checkpoint}: {err}",
            f"ltpa report {cmd['run']} --data {shlex.quote(str(spec))}",
            f"ltpa attend {cmd['checkpoint']} --data {shlex.quote(str(spec))} --out {cmd['run']}/attend")}
    frames = [{"caption": f.caption, "correct": f.correct, "images": f.images} for f in panel.frames]
    return {"panel": panel, "frames": frames}


def _diagnose_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, info in summary["levels"].items():
        stats, flags = info["stats"], info["flagged"]
        rows.append([name, "x".join(str(s) for s in info["shape"]), f"{info['stride']:g}",
                     f"{stats['effective_positions']['median']:.1f}", f"{stats['max_mass']['mean']:.3g}",
                     f"{stats['normalised_entropy']['mean']:.2f}", f"{stats['border_mass']['mean']:.0%}",
                     f"{stats['shared_scale_peak']['mean']:.0%}",
                     ", ".join(f"{k} {v:.0f}%" for k, v in flags.items() if v) or "none"])
    return rows


def render_report(run: RunData, *, data: str | None = None, attention_images: int = 8,
                  attention_pool: int = 64) -> str:
    """The report's HTML text for an already collected run (see :func:`build_report`)."""
    config = run.config or {}
    title = f"{config.get('model', 'run')} on {config.get('data', '?')}"
    tested = (run.final or {}).get("tested_epoch")
    curves = ({"uri": figure_uri(curves_figure(run.metrics, title=title, tested_epoch=tested), fmt="svg")}
              if run.metrics else
              {"missing": sections.missing_section("metrics.jsonl holds no finished epoch yet.",
                                           f"ltpa train --resume --out {sections.commands(run)['run']}")})
    per_class = sections.per_class_section(run)
    if per_class.get("matrix"):
        confusion = {"uri": figure_uri(confusion_figure(per_class["matrix"], per_class["names"]), dpi=80),
                     "classes": len(per_class["names"])}
    else:
        confusion = {"missing": per_class.get("missing") or sections.missing_section(
            "test_report.json has no confusion matrix.", f"ltpa eval {sections.commands(run)['checkpoint']}")}
    attention = _attention(run, data=data, images=attention_images, pool=attention_pool)
    cmd = sections.commands(run)
    parts = {"config": sections.config_section(run), "environment": sections.environment_section(run),
             "curves": curves, "final": sections.final_section(run), "per_class": per_class,
             "confusion": confusion, "attention": attention, "transfer": sections.transfer_section(run)}
    context = {
        **{name: {"missing": None, **part} for name, part in parts.items()},
        "title": title, "run_dir": str(run.run_dir), "status": _status(run), "notes": run.notes,
        "generator": GENERATOR, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sections": SECTIONS, "demo_summary": run.demo_summary,
        "diagnose_rows": _diagnose_rows(attention["panel"].summary) if "panel" in attention else [],
        "modes": DISPLAY_MODES, "scale_notes": SCALE_NOTES,
        "localise": sections.localise_sections(run), "sanity": sections.sanity_sections(run),
        "log_tail": run.log_tail,
        "commands": {
            "diagnose": f"ltpa diagnose {cmd['checkpoint']}",
            "localise": f"ltpa localise {cmd['checkpoint']} --out {cmd['run']}/localise",
            "sanity": sections.SANITY_COMMAND.format(**cmd),
        },
        "has_boxes": str(config.get("data", "")).split(":", 1)[0].split(",", 1)[0] in ("synthetic", "cub", "masks"),
    }
    return _environment().get_template("report.html.j2").render(**context)


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML file; give a path ending in .html, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"{str(out)!r} is a folder; give a file path such as {str(out / REPORT_FILE)!r}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {str(out.parent)!r} of the report does not exist; create it first")
    # An existing file is replaced only if ltpa wrote it: its folder's manifest lists it, or it
    # carries the report's generator tag (reports are always replaced by the next `ltpa report`).
    check_output_file(out, overwrite=True, what="report of `ltpa report`",
                      recognise=marker_recogniser(f'name="generator" content="{GENERATOR}"'.encode()))


def build_report(run_dir: str | Path, out: str | Path | None = None, *, data: str | None = None,
                 attention_images: int = 8, attention_pool: int = 64) -> Path:
    """Write one self-contained HTML report of a run folder (finished or still training).

    Sections: configuration and environment, training curves, final metrics (with the tested
    epoch and why it was chosen), per-class accuracy and the confusion matrix, the attention
    maps of the run's checkpoint on a few test images (correct and wrong predictions; every
    display scale, switched in the page), the ``diagnose`` verdicts, ``ltpa localise`` and
    ``ltpa sanity`` results found in the folder or its subfolders, the transfer report and the
    end of the training log. A section whose files are missing says how to produce them.

    Args:
        run_dir: the run folder (``--out`` of ``ltpa train`` / ``ltpa demo``).
        out: the HTML file to write; default ``run_dir/report.html``. An existing file is
            replaced only if an earlier ``ltpa report`` wrote it.
        data: data spec of the test images for the attention section (default the run's
            ``config.data``; pass it when that relative path does not resolve from here).
        attention_images: images drawn in the attention section (half correct, half wrong).
        attention_pool: test images the model runs on (the diagnose summary covers them).

    Returns:
        The path of the report.

    Raises:
        FileNotFoundError: ``run_dir`` or the folder of ``out`` does not exist.
        ValueError: ``run_dir`` is not a run, ``out`` is not an ``.html`` path that may be written,
            or the image counts are not ints with ``1 <= attention_images <= attention_pool``.
    """
    for name, value, low in (("attention_images", attention_images, 1),
                             ("attention_pool", attention_pool, attention_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    run = collect_run(run_dir)
    out = Path(out) if out is not None else run.run_dir / REPORT_FILE
    _check_out(out)  # before the slow part, and again nothing is written on refusal
    text = render_report(run, data=data, attention_images=attention_images, attention_pool=attention_pool)
    return atomic_write_bytes(out, text.encode("utf-8"))
