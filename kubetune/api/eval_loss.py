"""The rules of the eval-loss gate (`evaluate.maxEvalLoss`, `evaluate.maxEvalLossRatio`): both need held-out data,
so the spec refuses them without `dataset.evalSplit`."""

from __future__ import annotations

from kubetune.api.base import CelRule

# Checked on the whole spec: the gate is in `evaluate`, the split it needs in `dataset`.
EVAL_LOSS_GATE_RULES: tuple[CelRule, ...] = tuple(
    CelRule(
        f"!has(self.evaluate) || !has(self.evaluate.{name}) "
        "|| has(self.dataset) && has(self.dataset.evalSplit) && self.dataset.evalSplit > 0.0",
        f"evaluate.{name} needs held-out data: set dataset.evalSplit above 0",
        f".evaluate.{name}",
    )
    for name in ("maxEvalLoss", "maxEvalLossRatio")
)
