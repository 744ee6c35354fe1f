"""Where the train stage reports besides progress.json: an MLflow tracking server and TensorBoard event files.

`spec.tracking.mlflow`: one MLflow run per train stage key (a resumed stage finds its run by tags and goes on
logging to it): the hyper-parameters as params, every numeric field of each progress record as a metric at its step
(loss, learningRate, tokensPerSecond, epoch, evalLoss, ...), and at the end lineage.json, the loss plot, the metrics
and the adapter config as artifacts. A background thread talks to the server, so a slow or absent one never holds a
training step back; its failures are retried with backoff, logged once as a warning and summarised at the end, and
never fail training.

`spec.tracking.tensorboard`: an event file under `tensorboard/` in the train output with the same values, written
from the trainer state when training finishes (so a resumed run's file holds every step, not only the last part).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from pydantic.alias_generators import to_camel

from kubetune.api.tracking import MlflowSpec
from kubetune.jobs.errors import Stopped
from kubetune.jobs.runtime import JobContext
from kubetune.jobs.tracking_mlflow import Metric, MlflowClient, MlflowError, MlflowRun
from kubetune.jobs.tracking_tensorboard import write_scalar_events
from kubetune.runconfig import RunConfig
from kubetune.store import LINEAGE_NAME

log = logging.getLogger("kubetune.jobs.tracking")

ProgressReporter = Callable[..., None]  # JobContext.progress: (phase="Running", *, force=False, **fields)

TENSORBOARD_DIR = "tensorboard"
# Progress fields that say where training is, not how it does: not metrics.
NOT_METRICS = frozenset({"step", "totalSteps", "etaSeconds", "exitCode"})
# Train outputs logged as MLflow artifacts when present, with their content types.
ARTIFACTS = {LINEAGE_NAME: "application/json", "loss.png": "image/png", "metrics.csv": "text/csv",
             "metrics.json": "application/json", "adapter/adapter_config.json": "application/json"}
FLUSH_TIMEOUT_S = 30.0  # how long the end of the stage waits for queued MLflow calls


def hyper_parameters(run: RunConfig) -> dict[str, str]:
    """The spec fields training reads, flattened to `training.lora.r`-style names, as MLflow params."""
    manifest = run.spec.to_manifest()
    params: dict[str, str] = {"baseModel.uri": run.spec.base_model.uri,
                              "dataset.maxSeqLength": str(run.spec.dataset.max_seq_length)}
    if run.sources is not None:
        params["baseModel.digest"] = run.sources.base_model.digest
        if run.sources.base_model.revision:
            params["baseModel.revision"] = run.sources.base_model.revision
        params["dataset.digest"] = run.sources.dataset.digest
    _flatten("training", manifest["training"], params)
    return params


def _flatten(prefix: str, value: Any, into: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, into)
    elif isinstance(value, bool):
        into[prefix] = "true" if value else "false"
    elif isinstance(value, list):
        into[prefix] = ", ".join(str(item) for item in value)
    else:
        into[prefix] = str(value)


def progress_metrics(fields: Mapping[str, Any], timestamp_ms: int) -> list[Metric]:
    """The numeric fields of a progress record with a step, as metrics at that step."""
    step = fields.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return []
    return [Metric(key, float(value), step, timestamp_ms) for key, value in sorted(fields.items())
            if key not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)]


def trainer_state_scalars(metrics: list[dict[str, float]], eval_losses: list[dict[str, float]]
                          ) -> list[tuple[int, dict[str, float]]]:
    """Per step, the values the progress records carried (camelCase names), from the trainer state's rows."""
    steps: dict[int, dict[str, float]] = {}
    for row in metrics:
        steps.setdefault(int(row["step"]), {}).update(
            {to_camel(key): float(value) for key, value in row.items() if key != "step"})
    for row in eval_losses:  # its epoch is the training row's at the same step (none for the base model's, step 0)
        steps.setdefault(int(row["step"]), {})["evalLoss"] = float(row["eval_loss"])
    return sorted(steps.items())


class MlflowTracking:
    """The train stage's MLflow run, fed by a background thread from a queue of calls."""

    def __init__(self, spec: MlflowSpec, run: RunConfig, stage_key: str, client: MlflowClient | None = None) -> None:
        self.spec = spec
        self.client = client or MlflowClient(spec.tracking_uri)
        self.mlflow_run: MlflowRun | None = None
        self.calls = 0
        self.failed = 0
        self.first_error: str | None = None
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="mlflow-tracking", daemon=True)
        tags = {"kubetune.run": f"{run.namespace}/{run.name}", "kubetune.stageKey": stage_key}
        if run.uid:  # `kubetune run` has none
            tags["kubetune.uid"] = run.uid
        self._queue.put(lambda: self._start(run, tags))
        self._thread.start()

    def _start(self, run: RunConfig, tags: Mapping[str, str]) -> None:
        experiment = self.client.experiment_id(self.spec.experiment)
        found = self.client.find_run(experiment, tags)  # a resumed train stage goes on with its run
        self.mlflow_run = found or self.client.create_run(experiment, self.spec.run_name or run.name, tags)
        if found is not None:
            self.client.set_status(found.run_id, "RUNNING", ended=False)
        self.client.log_batch(self.mlflow_run.run_id, params=hyper_parameters(run))

    def record(self, fields: Mapping[str, Any]) -> None:
        metrics = progress_metrics(fields, int(time.time() * 1000))
        if metrics:
            self._queue.put(lambda: self._log(metrics))

    def _log(self, metrics: list[Metric]) -> None:
        assert self.mlflow_run is not None  # _work runs nothing after a failed start
        self.client.log_batch(self.mlflow_run.run_id, metrics=metrics)

    def end(self, status: str, outputs: Path | None) -> None:
        """Upload the outputs' artifacts (when given), set the run's final status, and wait for the queue."""
        if outputs is not None:
            for name, content_type in ARTIFACTS.items():
                if (outputs / name).is_file():
                    self._queue.put(partial(self._upload, outputs, name, content_type))
        self._queue.put(lambda: self._set_status(status))
        self._queue.put(None)
        self._thread.join(FLUSH_TIMEOUT_S)
        if self._thread.is_alive():
            self._fail(f"the server did not take the queued calls within {FLUSH_TIMEOUT_S:.0f} s")
        if self.failed:
            log.info("mlflow tracking at %s: %d of %d calls failed (first: %s); training was not affected",
                     self.spec.tracking_uri, self.failed, self.calls, self.first_error)

    def _upload(self, outputs: Path, name: str, content_type: str) -> None:
        assert self.mlflow_run is not None
        self.client.upload_artifact(self.mlflow_run, name, (outputs / name).read_bytes(), content_type)

    def _set_status(self, status: str) -> None:
        assert self.mlflow_run is not None
        self.client.set_status(self.mlflow_run.run_id, status, ended=True)

    def _work(self) -> None:
        started = False
        while (call := self._queue.get()) is not None:
            self.calls += 1
            if self.mlflow_run is None and started:
                self.failed += 1  # no run to log to: the start failed
                continue
            try:
                call()
            except Exception as error:  # noqa: BLE001 - whatever a server answers, it never ends tracking or training
                self._fail(str(error) if isinstance(error, MlflowError) else f"{type(error).__name__}: {error}")
            started = True

    def _fail(self, reason: str) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = " ".join(reason.split())[:300]
            log.warning("mlflow tracking at %s failed (training goes on; later failures are summarised at the end): %s",
                        self.spec.tracking_uri, self.first_error)


class TrainTracker:
    """What the train stage's rank 0 reports besides progress.json; other ranks track nothing."""

    def __init__(self, ctx: JobContext, *, enabled: bool) -> None:
        tracking = ctx.run.spec.tracking
        self.tensorboard = enabled and tracking.tensorboard
        self.mlflow = MlflowTracking(tracking.mlflow, ctx.run, ctx.key) if enabled and tracking.mlflow else None
        self.outputs: Path | None = None

    def observe(self, progress: ProgressReporter) -> ProgressReporter:
        """`progress`, also forwarding each record's metrics to MLflow."""
        mlflow = self.mlflow
        if mlflow is None:
            return progress

        def report(phase: str = "Running", *, force: bool = False, **fields: Any) -> None:
            progress(phase, force=force, **fields)
            mlflow.record(fields)
        return report

    def before_publish(self, outputs: Path, metrics: list[dict[str, float]], eval_losses: list[dict[str, float]]
                       ) -> None:
        """Write the TensorBoard event file into the outputs; their artifacts go to MLflow once published."""
        self.outputs = outputs
        if self.tensorboard:
            write_scalar_events(outputs / TENSORBOARD_DIR, trainer_state_scalars(metrics, eval_losses))

    def end(self, status: str) -> None:
        if self.mlflow is not None:
            self.mlflow.end(status, self.outputs if status == "FINISHED" else None)


@contextmanager
def track_training(ctx: JobContext, *, enabled: bool) -> Iterator[TrainTracker]:
    """A tracker for the stage; its MLflow run ends FINISHED, KILLED (stopped: a later attempt resumes it) or
    FAILED with the stage."""
    tracker = TrainTracker(ctx, enabled=enabled)
    try:
        yield tracker
    except Stopped:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
