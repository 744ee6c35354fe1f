"""The training pictures: `metrics.csv` (one row per logged or evaluated step) and `loss.png`."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in pods or tests
import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first
from matplotlib.figure import Figure

METRIC_COLUMNS = ("step", "epoch", "loss", "learning_rate", "tokens_per_second")
EVAL_COLUMN = "eval_loss"  # only in a run with an eval split


def metric_rows(rows: Sequence[dict[str, float]], eval_rows: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Training rows with the eval loss of their step; an eval at a step that was not logged gets its own row."""
    evals = {row["step"]: row for row in eval_rows}
    merged = [{**row, **({EVAL_COLUMN: evals[row["step"]][EVAL_COLUMN]} if row["step"] in evals else {})}
              for row in rows]
    logged = {row["step"] for row in rows}
    merged.extend(dict(row) for step, row in evals.items() if step not in logged)
    return sorted(merged, key=lambda row: row["step"])


def write_metrics_csv(
    rows: Sequence[dict[str, float]], path: Path, eval_rows: Sequence[dict[str, float]] = ()
) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        columns = (*METRIC_COLUMNS, EVAL_COLUMN) if eval_rows else METRIC_COLUMNS
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(metric_rows(rows, eval_rows))


def loss_figure(rows: Sequence[dict[str, float]], title: str, eval_rows: Sequence[dict[str, float]] = ()) -> Figure:
    """The training loss, and the held-out loss (dashed, from the base model's at step 0) when there is one."""
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    axis.plot([row["step"] for row in rows], [row["loss"] for row in rows], linewidth=1.5, label="training loss")
    if eval_rows:
        axis.plot([row["step"] for row in eval_rows], [row["eval_loss"] for row in eval_rows], linestyle="--",
                  marker="o", linewidth=1.5, label="eval loss (held-out)")
        axis.legend()
    axis.set_xlabel("step")
    axis.set_ylabel("loss (assistant tokens)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_loss(rows: Sequence[dict[str, float]], path: Path, title: str,
              eval_rows: Sequence[dict[str, float]] = ()) -> None:
    figure = loss_figure(rows, title, eval_rows)
    figure.savefig(path)
    plt.close(figure)
