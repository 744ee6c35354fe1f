"""The eval-loss part of the evaluate stage's gate, on the figures the train stage published (`eval_loss.py`).

`evaluate.maxEvalLoss` bounds the final eval loss; `evaluate.maxEvalLossRatio` bounds it as a multiple of the base
model's, and is 1.0 when not set: with an eval split, a fine-tuned model worse than its base on held-out data fails.
Without an eval split there is nothing to gate on, and the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api.types import EvaluateSpec

DEFAULT_MAX_EVAL_LOSS_RATIO = 1.0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def eval_loss_gate(train_figures: Mapping[str, Any], evaluate: EvaluateSpec, eval_split: float) -> dict[str, Any]:
    """The gate's verdict: `checked` (was there anything to gate on), `failure` (the one-line reason, or None),
    `summary` (one line for logs and the stage output) and the figures it used."""
    base, final = _number(train_figures.get("baseEvalLoss")), _number(train_figures.get("finalEvalLoss"))
    report: dict[str, Any] = {"checked": False, "failure": None, "baseEvalLoss": base, "finalEvalLoss": final,
                              "evalSamples": train_figures.get("evalSamples", 0)}
    if eval_split <= 0:
        return {**report, "summary": "no eval split (dataset.evalSplit is 0): no eval-loss gate"}
    if final is None:
        return {**report, "summary": "the train output records no eval loss: no eval-loss gate"}
    ratio_set = evaluate.max_eval_loss_ratio is not None
    max_ratio = evaluate.max_eval_loss_ratio or DEFAULT_MAX_EVAL_LOSS_RATIO  # > 0 when set
    failures: list[str] = []
    if evaluate.max_eval_loss is not None and final > evaluate.max_eval_loss:
        failures.append(f"eval loss {final:.4f} > evaluate.maxEvalLoss {evaluate.max_eval_loss:g}")
    if base is not None and final > max_ratio * base:
        default = "" if ratio_set else " (the default with an eval split)"
        failures.append(f"eval loss {final:.4f} is {final / base:.3f}× the base model's {base:.4f} > "
                        f"evaluate.maxEvalLossRatio {max_ratio:g}{default}")
    elif base is None and ratio_set:
        failures.append("evaluate.maxEvalLossRatio needs the base model's eval loss, which the train output lacks")
    summary = f"eval loss {final:.4f}" + (f" (base model {base:.4f})" if base is not None else "")
    return {**report, "checked": True, "failure": "; ".join(failures) or None, "summary": summary,
            "maxEvalLoss": evaluate.max_eval_loss, "maxEvalLossRatio": max_ratio}
