"""A small client of MLflow's REST API: the job image needs no mlflow package to log to a tracking server.

Only what the train stage uses: experiments (get-by-name, create), runs (create, search, update, log-batch) and the
server's proxied artifact endpoint (`mlflow server --serve-artifacts`). Credentials come from the environment
variables MLflow's own clients read: MLFLOW_TRACKING_TOKEN (bearer) or MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (basic).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
PROXIED_ARTIFACT_SCHEME = "mlflow-artifacts"
# log-batch limits of the REST API: 1000 metrics, 100 params, 100 tags, 1000 entities in all per request.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000  # characters; longer values are cut (the server refuses them)
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class MlflowError(Exception):
    """A request the server refused or could not be reached for; `retryable` when trying again may help."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


@dataclass(frozen=True)
class Metric:
    key: str
    value: float
    step: int
    timestamp_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "step": self.step, "timestamp": self.timestamp_ms}


@dataclass(frozen=True)
class MlflowRun:
    run_id: str
    experiment_id: str
    artifact_uri: str


def credentials_header(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    token = env.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")}
    return {}


class MlflowClient:
    """One tracking server. Every call retries what may pass on a second try (no answer, 5xx, 429) with backoff."""

    def __init__(self, tracking_uri: str, *, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 attempts: int = 3, backoff_s: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base = tracking_uri.rstrip("/")
        self.headers = dict(headers if headers is not None else credentials_header())
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sleep = sleep

    # --- experiments and runs -------------------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """The id of the experiment called `name`, created when there is none."""
        try:
            found = self._call("GET", f"{API}/experiments/get-by-name?" +
                               urllib.parse.urlencode({"experiment_name": name}))
            return str(found["experiment"]["experiment_id"])
        except MlflowError as error:
            if error.code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self._call("POST", f"{API}/experiments/create", {"name": name})["experiment_id"])
        except MlflowError as error:
            if error.code != "RESOURCE_ALREADY_EXISTS":  # another run created it meanwhile
                raise
        return str(self._call("GET", f"{API}/experiments/get-by-name?" +
                              urllib.parse.urlencode({"experiment_name": name}))["experiment"]["experiment_id"])

    def find_run(self, experiment_id: str, tags: Mapping[str, str]) -> MlflowRun | None:
        """The latest run of the experiment carrying all of `tags`."""
        condition = " and ".join(f"tags.`{key}` = '{_quote(value)}'" for key, value in sorted(tags.items()))
        found = self._call("POST", f"{API}/runs/search", {"experiment_ids": [experiment_id], "filter": condition,
                                                         "max_results": 1, "order_by": ["attributes.start_time DESC"]})
        runs = found.get("runs") or []
        return _run(runs[0]) if runs else None

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, str]) -> MlflowRun:
        body = {"experiment_id": experiment_id, "run_name": name, "start_time": _now_ms(),
                "tags": [{"key": key, "value": value} for key, value in sorted(tags.items())]}
        return _run(self._call("POST", f"{API}/runs/create", body)["run"])

    def set_status(self, run_id: str, status: str, *, ended: bool) -> None:
        """RUNNING, FINISHED, FAILED or KILLED; an ended run gets its end time."""
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if ended:
            body["end_time"] = _now_ms()
        self._call("POST", f"{API}/runs/update", body)

    def log_batch(self, run_id: str, *, metrics: Sequence[Metric] = (), params: Mapping[str, str] | None = None
                  ) -> None:
        """Metrics and params in as many requests as the server's batch limits ask for."""
        param_items = [{"key": key, "value": value[:MAX_PARAM_VALUE]} for key, value in sorted((params or {}).items())]
        for start in range(0, len(param_items), MAX_PARAMS_PER_BATCH):
            self._call("POST", f"{API}/runs/log-batch",
                       {"run_id": run_id, "params": param_items[start:start + MAX_PARAMS_PER_BATCH]})
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            chunk = [metric.to_json() for metric in metrics[start:start + MAX_METRICS_PER_BATCH]]
            self._call("POST", f"{API}/runs/log-batch", {"run_id": run_id, "metrics": chunk})

    # --- artifacts --------------------------------------------------------------------------------------------------

    def upload_artifact(self, run: MlflowRun, path: str, data: bytes, content_type: str) -> None:
        """Store `data` as the run's artifact `path` through the server's proxied artifact endpoint."""
        parsed = urllib.parse.urlparse(run.artifact_uri)
        if parsed.scheme != PROXIED_ARTIFACT_SCHEME:
            raise MlflowError(f"the run's artifact location {run.artifact_uri} is not served by the tracking server "
                              "(start it with --serve-artifacts)", retryable=False)
        location = "/".join(part for part in (parsed.path.strip("/"), path.strip("/")) if part)
        self._request("PUT", f"{ARTIFACTS_API}/{urllib.parse.quote(location)}", data, content_type)

    # --- transport --------------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        raw = self._request(method, path, data, "application/json" if data is not None else None)
        answer = json.loads(raw) if raw.strip() else {}
        if not isinstance(answer, dict):
            raise MlflowError(f"{method} {path}: the answer is not a JSON object", retryable=False)
        return answer

    def _request(self, method: str, path: str, data: bytes | None, content_type: str | None) -> bytes:
        for attempt in range(1, self.attempts + 1):
            try:
                return self._once(method, path, data, content_type)
            except MlflowError as error:
                if not error.retryable or attempt == self.attempts:
                    raise
                self.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _once(self, method: str, path: str, data: bytes | None, content_type: str | None) -> bytes:
        headers = dict(self.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:2000].decode("utf-8", "replace")
            code = _error_code(detail)
            raise MlflowError(f"{method} {path}: HTTP {error.code} {code or ''} {' '.join(detail.split())[:300]}",
                              retryable=error.code in RETRY_STATUS, code=code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:  # refused, timed out, cut off
            reason = getattr(error, "reason", error)
            raise MlflowError(f"{method} {self.base}: {reason}", retryable=True) from None


def _run(data: Mapping[str, Any]) -> MlflowRun:
    info = data["info"]
    return MlflowRun(run_id=str(info["run_id"]), experiment_id=str(info["experiment_id"]),
                     artifact_uri=str(info.get("artifact_uri", "")))


def _error_code(detail: str) -> str | None:
    try:
        answer = json.loads(detail)
    except ValueError:
        return None
    code = answer.get("error_code") if isinstance(answer, dict) else None
    return code if isinstance(code, str) else None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _now_ms() -> int:
    return int(time.time() * 1000)
