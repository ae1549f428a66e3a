"""A run you can look at: one self-contained HTML report of a run folder.

``build_report(run_dir)`` writes ``run_dir/report.html`` with the configuration, environment,
curves, final and per-class metrics, confusion matrix, attention maps (every display scale,
correct and wrong predictions), ``diagnose`` verdicts, ``localise``/``sanity`` results and the
transfer report; ``collect_run`` reads a run folder into a plain :class:`RunData`.
"""
from ltpa.report.collect import RunData, collect_run
from ltpa.report.html import REPORT_FILE, build_report, render_report

__all__ = ["REPORT_FILE", "RunData", "build_report", "collect_run", "render_report"]
