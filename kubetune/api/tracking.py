"""`spec.tracking`: where the train stage also reports its metrics (MLflow, TensorBoard event files).

Tracking changes where metrics go, not what is learned: no tracking field is part of a stage key (kubetune/stages.py),
so turning it on or off never trains again. MLflow credentials are a Secret's keys that reach the train job as the
environment variables MLflow's own clients read (README: Lineage and tracking).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kubetune.api.base import ApiModel

# The same pattern as types.SecretKeyRef's name (which this module cannot import: types imports it).
_SECRET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# http or https, a host, an optional path; no spaces (the API server checks the same pattern).
HTTP_URL = r"^https?://[^/\s?#]+(/[^\s]*)?$"
# The environment variables MLflow's clients read, from the keys of spec.tracking.mlflow.credentialsSecret.
MLFLOW_CREDENTIAL_KEYS = {"MLFLOW_TRACKING_TOKEN": "token", "MLFLOW_TRACKING_USERNAME": "username",
                          "MLFLOW_TRACKING_PASSWORD": "password"}


class MlflowCredentialsSecretRef(ApiModel):
    """A Secret in the run's namespace with the MLflow server's credentials."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_SECRET_NAME)]
    """Name of the Secret. Its optional keys `token` (sent as a bearer token) or `username` and `password` (basic
    auth) reach the train job as MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD."""


class MlflowSpec(ApiModel):
    """An MLflow tracking server the train stage logs its parameters, metrics and artifacts to."""

    tracking_uri: Annotated[str, Field(min_length=1, max_length=2048, pattern=HTTP_URL)]
    """The server's URL (http or https), e.g. http://mlflow.mlops:5000; artifacts go through its proxied artifact
    endpoint (`mlflow server --serve-artifacts`, the default)."""
    experiment: Annotated[str, Field(min_length=1, max_length=500)] = "kubetune"
    """Experiment name; created when the server has none by that name."""
    run_name: Annotated[str | None, Field(default=None, min_length=1, max_length=250)]
    """Name of the MLflow run; default: the FineTuneRun's name."""
    credentials_secret: MlflowCredentialsSecretRef | None = None
    """Credentials for a server that asks for them; none by default."""


class TrackingSpec(ApiModel):
    """Where the train stage reports metrics besides status.progress and metrics.csv."""

    mlflow: MlflowSpec | None = None
    """Log to an MLflow tracking server; off by default. A server that fails never fails training."""
    tensorboard: bool = False
    """Write TensorBoard event files (scalars per logging step) under `tensorboard/` in the train output."""
