"""The training pictures: `metrics.csv` (one row per logged step) and `loss.png`."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in pods or tests
import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first

METRIC_COLUMNS = ("step", "epoch", "loss", "learning_rate", "tokens_per_second")


def write_metrics_csv(rows: Sequence[dict[str, float]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_loss(rows: Sequence[dict[str, float]], path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    axis.plot([row["step"] for row in rows], [row["loss"] for row in rows], linewidth=1.5)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (assistant tokens)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
