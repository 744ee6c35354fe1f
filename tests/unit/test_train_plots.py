"""The training pictures: metrics.csv rows carry the eval loss of their step, loss.png draws it as its own line."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt

from kubetune.jobs.plots import loss_figure, metric_rows, plot_loss, write_metrics_csv

TRAIN = [{"step": s, "epoch": s / 4, "loss": 3.0 - s / 4, "learning_rate": 1e-3, "tokens_per_second": 100.0}
         for s in (1, 2, 3, 4)]
EVAL = [{"step": 0, "epoch": 0.0, "eval_loss": 3.2}, {"step": 2, "epoch": 0.5, "eval_loss": 2.9},
        {"step": 4, "epoch": 1.0, "eval_loss": 2.6}]


def test_eval_losses_join_the_row_of_their_step_and_the_base_models_gets_a_row_of_its_own() -> None:
    rows = metric_rows(TRAIN, EVAL)
    assert [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows] == [
        (0, None, 3.2), (1, 2.75, None), (2, 2.5, 2.9), (3, 2.25, None), (4, 2.0, 2.6)]


def test_metrics_csv_has_an_eval_loss_column_empty_where_nothing_was_measured(tmp_path: Path) -> None:
    write_metrics_csv(TRAIN, tmp_path / "metrics.csv", EVAL)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(r["step"], r["loss"], r["eval_loss"]) for r in rows] == [
        ("0", "", "3.2"), ("1", "2.75", ""), ("2", "2.5", "2.9"), ("3", "2.25", ""), ("4", "2.0", "2.6")]


def test_the_loss_picture_draws_the_eval_loss_as_a_dashed_line_beside_the_training_loss() -> None:
    figure = loss_figure(TRAIN, "lora training loss", EVAL)
    try:
        train_line, eval_line = figure.axes[0].get_lines()
        assert list(eval_line.get_xdata()) == [0, 2, 4] and list(eval_line.get_ydata()) == [3.2, 2.9, 2.6]
        assert eval_line.get_linestyle() == "--" and eval_line.get_label() == "eval loss (held-out)"
        assert list(train_line.get_ydata()) == [2.75, 2.5, 2.25, 2.0]
    finally:
        plt.close(figure)


def test_without_eval_losses_the_picture_has_the_training_line_alone(tmp_path: Path) -> None:
    figure = loss_figure(TRAIN, "lora training loss")
    try:
        assert len(figure.axes[0].get_lines()) == 1 and figure.axes[0].get_legend() is None
    finally:
        plt.close(figure)
    plot_loss(TRAIN, tmp_path / "loss.png", "lora training loss", EVAL)
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_a_run_without_an_eval_split_keeps_the_metrics_csv_columns_it_always_had(tmp_path: Path) -> None:
    write_metrics_csv(TRAIN, tmp_path / "metrics.csv")
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,epoch,loss,learning_rate,tokens_per_second"
