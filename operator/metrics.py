"""Prometheus metrics of the operator, on their own registry (tests run several operators in one process)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api.run_status import RunPhase
from kubetune.operator.problems import STALL_REASONS
from kubetune.operator.status import Transition

RUN_PHASES: tuple[RunPhase, ...] = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed")
# Stages take from seconds (dataset) to days (train).
# status.progress field -> (gauge name after kubetune_run_training_, help).
TRAINING_GAUGES = {
    "step": ("step", "Optimizer steps done by the run's train stage"),
    "loss": ("loss", "Training loss at the latest logging step"),
    "tokensPerSecond": ("tokens_per_second", "Training throughput in (non-padding) tokens per second"),
    "evalLoss": ("eval_loss", "Loss on the eval split at the latest checkpoint"),
    "learningRate": ("learning_rate", "Learning rate at the latest logging step"),
}
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200, float("inf"))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.runs = Gauge("kubetune_runs", "FineTuneRuns by phase", ["phase"], registry=self.registry)
        self.stage_duration = Histogram("kubetune_stage_duration_seconds", "Wall time of stages that succeeded",
                                        ["stage"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.job_creations = Counter("kubetune_job_creations_total", "Stage Jobs created", ["stage"],
                                     registry=self.registry)
        self.retries = Counter("kubetune_job_retries_total", "Stage Jobs created after an earlier attempt failed",
                               ["stage"], registry=self.registry)
        self.failures = Counter("kubetune_stage_failures_total", "Stages that ended the run Failed", ["stage"],
                                registry=self.registry)
        self.reconciles = Counter("kubetune_reconciles_total", "Reconciles by outcome", ["outcome"],
                                  registry=self.registry)
        self.store_errors = Counter("kubetune_store_errors_total", "Reconciles that could not read the store",
                                    ["reason"], registry=self.registry)
        self.stalls = Counter("kubetune_run_stalls_total", "Runs that became stalled, by reason", ["reason"],
                              registry=self.registry)
        self.stalled = Gauge("kubetune_runs_stalled", "Runs stalled now, by reason", ["reason"], registry=self.registry)
        self.superseded_replaced = Counter(
            "kubetune_superseded_jobs_replaced_total",
            "Jobs of a previous spec deleted so that the new spec's Job can start, by trigger (grace or annotation)",
            ["stage", "trigger"], registry=self.registry)
        self.notifications = Counter("kubetune_notifications_total",
                                     "Webhook notifications by event and outcome (delivered or failed)",
                                     ["event", "outcome"], registry=self.registry)
        # Per-run training figures from status.progress, labelled by run; removed with the run.
        self.training = {
            field: Gauge(f"kubetune_run_training_{metric}", help_text, ["namespace", "name"], registry=self.registry)
            for field, (metric, help_text) in TRAINING_GAUGES.items()
        }
        self._phases: dict[tuple[str, str], str] = {}
        self._stalled: dict[tuple[str, str], str] = {}  # run -> reason

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    def job_created(self, stage: str, attempt: int) -> None:
        self.job_creations.labels(stage).inc()
        if attempt > 1:
            self.retries.labels(stage).inc()

    def run_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Record a run's phase (None: the run is gone) and refresh the per-phase gauge."""
        if phase is None:
            self._phases.pop((namespace, name), None)
        else:
            self._phases[(namespace, name)] = phase
        for known in RUN_PHASES:
            self.runs.labels(known).set(sum(1 for p in self._phases.values() if p == known))

    def run_stalled(self, namespace: str, name: str, reason: str | None) -> None:
        """Record why a run is stalled (None: it is not, or it is gone) and refresh the per-reason gauge."""
        key = (namespace, name)
        before = self._stalled.get(key)
        if reason == before:
            return
        if reason is None:
            del self._stalled[key]
        else:
            self._stalled[key] = reason
        for changed in {before, reason} - {None}:
            self.stalled.labels(changed).set(sum(1 for r in self._stalled.values() if r == changed))

    def run_progress(self, namespace: str, name: str, progress: Mapping[str, object] | None) -> None:
        """Set the run's training gauges from its status.progress (None: no progress, or the run is gone); a figure
        the progress does not carry (yet) has no sample rather than a stale one."""
        for field, gauge in self.training.items():
            value = (progress or {}).get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                gauge.labels(namespace, name).set(value)
            else:
                gauge.remove(namespace, name)  # nothing to remove is fine

    def transitions(self, transitions: tuple[Transition, ...], stages: Mapping[str, Mapping[str, object]]) -> None:
        for transition in transitions:
            if transition.type == "Warning" and transition.reason in STALL_REASONS:
                self.stalls.labels(transition.reason).inc()  # one Event per stall, not per reconcile
            stage = transition.stage
            if stage is None:
                continue
            block = stages.get(stage) or {}
            if transition.reason == "StageSucceeded":
                seconds = _seconds_between(block.get("startTime"), block.get("completionTime"))
                if seconds is not None:
                    self.stage_duration.labels(stage).observe(seconds)
            elif transition.reason == "StageFailed":
                self.failures.labels(stage).inc()


def _seconds_between(start: object, end: object) -> float | None:
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    except ValueError:
        return None
