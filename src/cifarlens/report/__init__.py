"""Reporting and what happens after training, the layer above what it reports on (evaluation, explain,
experiments): ``write_report`` renders a run's HTML page, ``after_training`` is the step that ``train``,
a sweep's trials and the linear probe share once their weights are written."""

from cifarlens.report.after_training import after_training
from cifarlens.report.html import render_report, write_report

__all__ = ["after_training", "render_report", "write_report"]
