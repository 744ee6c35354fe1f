"""`kubetune run`'s training line and `kubetune status` show the held-out loss beside the training loss."""

from __future__ import annotations

from kubetune.progress_view import progress_line
from kubetune.status_view import render_describe


def test_the_training_line_shows_the_eval_loss_after_the_training_loss() -> None:
    line = progress_line("train", {"step": 4, "totalSteps": 8, "loss": 1.5, "evalLoss": 1.75, "tokensPerSecond": 90})
    assert line.endswith("4/8  50%  loss 1.5000  eval 1.7500  90 tok/s"), line


def test_without_an_eval_loss_the_line_has_no_eval_field() -> None:
    assert "eval" not in progress_line("train", {"step": 4, "totalSteps": 8, "loss": 1.5})


def test_kubetune_status_lists_the_eval_losses_under_training() -> None:
    document = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                "metadata": {"name": "identity", "namespace": "default"}, "spec": {},
                "status": {"phase": "Running", "progress": {"step": 4, "loss": 1.5, "evalLoss": 1.75,
                                                            "baseEvalLoss": 2.5}}}
    lines = [line.split() for line in render_describe(document).splitlines()]
    assert ["evalLoss:", "1.75"] in lines and ["baseEvalLoss:", "2.5"] in lines
