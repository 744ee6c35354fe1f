"""The eval-loss gate: with an eval split the fine-tuned model must not end worse than its base on held-out data
(unless `evaluate.maxEvalLossRatio` allows it), and must stay under `evaluate.maxEvalLoss` when that is set; without
an eval split there is nothing to gate and the report says so."""

from __future__ import annotations

from typing import Any

from kubetune.api.types import EvaluateSpec
from kubetune.jobs.eval_loss_gate import eval_loss_gate


def figures(base: float | None, final: float | None, samples: int = 40) -> dict[str, Any]:
    return {"baseEvalLoss": base, "finalEvalLoss": final, "evalSamples": samples}


def evaluate(**fields: Any) -> EvaluateSpec:
    return EvaluateSpec.model_validate(fields)


def test_by_default_a_model_that_improves_on_its_base_passes() -> None:
    verdict = eval_loss_gate(figures(2.5, 1.2), evaluate(), eval_split=0.1)
    assert verdict["checked"] and verdict["failure"] is None
    assert verdict["summary"] == "eval loss 1.2000 (base model 2.5000)"
    assert verdict["maxEvalLossRatio"] == 1.0


def test_by_default_a_model_worse_than_its_base_on_held_out_data_fails_naming_the_figures_and_the_field() -> None:
    verdict = eval_loss_gate(figures(2.0, 2.2), evaluate(), eval_split=0.1)
    assert verdict["failure"] == ("eval loss 2.2000 is 1.100× the base model's 2.0000 > evaluate.maxEvalLossRatio 1 "
                                  "(the default with an eval split)")


def test_a_ratio_above_one_tolerates_a_bounded_regression() -> None:
    assert eval_loss_gate(figures(2.0, 2.2), evaluate(maxEvalLossRatio=1.2), eval_split=0.1)["failure"] is None
    failed = eval_loss_gate(figures(2.0, 2.6), evaluate(maxEvalLossRatio=1.2), eval_split=0.1)["failure"]
    assert failed == "eval loss 2.6000 is 1.300× the base model's 2.0000 > evaluate.maxEvalLossRatio 1.2"


def test_max_eval_loss_bounds_the_final_eval_loss() -> None:
    assert eval_loss_gate(figures(3.0, 0.9), evaluate(maxEvalLoss=1.0), eval_split=0.1)["failure"] is None
    failed = eval_loss_gate(figures(3.0, 1.25), evaluate(maxEvalLoss=1.0), eval_split=0.1)["failure"]
    assert failed == "eval loss 1.2500 > evaluate.maxEvalLoss 1"


def test_both_failures_are_reported_together() -> None:
    failed = eval_loss_gate(figures(1.0, 1.5), evaluate(maxEvalLoss=1.2), eval_split=0.1)["failure"]
    assert failed is not None and "evaluate.maxEvalLoss 1.2" in failed and "evaluate.maxEvalLossRatio 1" in failed


def test_without_an_eval_split_nothing_is_gated_and_the_report_says_so() -> None:
    verdict = eval_loss_gate(figures(None, None, samples=0), evaluate(), eval_split=0.0)
    assert not verdict["checked"] and verdict["failure"] is None
    assert verdict["summary"] == "no eval split (dataset.evalSplit is 0): no eval-loss gate"


def test_a_train_output_without_eval_losses_is_not_gated_and_says_why() -> None:
    verdict = eval_loss_gate({"steps": 10}, evaluate(), eval_split=0.1)
    assert not verdict["checked"] and verdict["failure"] is None
    assert verdict["summary"] == "the train output records no eval loss: no eval-loss gate"


def test_an_explicit_ratio_without_the_base_model_figure_fails_rather_than_passing_unchecked() -> None:
    failed = eval_loss_gate(figures(None, 1.0), evaluate(maxEvalLossRatio=1.0), eval_split=0.1)["failure"]
    assert failed == "evaluate.maxEvalLossRatio needs the base model's eval loss, which the train output lacks"
    assert eval_loss_gate(figures(None, 1.0), evaluate(), eval_split=0.1)["failure"] is None
