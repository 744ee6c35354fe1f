"""Per-run training gauges: set from status.progress, a figure the progress lacks has no sample, a gone run none."""

from __future__ import annotations

from kubetune.operator.metrics import Metrics


def sample(metrics: Metrics, gauge: str, name: str = "nova") -> float | None:
    return metrics.registry.get_sample_value(f"kubetune_run_training_{gauge}", {"namespace": "team", "name": name})


def test_progress_figures_become_gauges_labelled_by_run() -> None:
    metrics = Metrics()
    metrics.run_progress("team", "nova", {"step": 40, "totalSteps": 100, "loss": 1.25, "tokensPerSecond": 812.5,
                                          "learningRate": 2e-4, "evalLoss": 1.5, "lastCheckpoint": "checkpoint-40"})
    metrics.run_progress("team", "other", {"step": 2, "loss": 3.0})
    assert (sample(metrics, "step"), sample(metrics, "loss"), sample(metrics, "tokens_per_second")) == (40, 1.25, 812.5)
    assert (sample(metrics, "eval_loss"), sample(metrics, "learning_rate")) == (1.5, 2e-4)
    assert (sample(metrics, "step", "other"), sample(metrics, "eval_loss", "other")) == (2, None)


def test_a_figure_that_leaves_the_progress_and_a_deleted_run_leave_no_stale_sample() -> None:
    metrics = Metrics()
    metrics.run_progress("team", "nova", {"step": 40, "loss": 1.25, "evalLoss": 1.5})
    metrics.run_progress("team", "nova", {"step": 41, "loss": 1.2})  # e.g. a new spec trains again from step 0
    assert (sample(metrics, "step"), sample(metrics, "eval_loss")) == (41, None)
    metrics.run_progress("team", "nova", None)
    assert sample(metrics, "step") is None and sample(metrics, "loss") is None
