"""Operator configuration, read once from environment variables (the Helm chart sets them from its values).

Every variable is optional; the defaults suit a cluster with the chart installed in its usual shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.types import Toleration

DEFAULT_JOB_IMAGE = "ghcr.io/kubetune/kubetune-job:0.1.0"
DEFAULT_JOB_COMMAND = ("python", "-m", "kubetune.jobs")


class SettingsError(ValueError):
    """An environment variable has a value the operator cannot use."""


@dataclass(frozen=True)
class OperatorSettings:
    job_image: str = DEFAULT_JOB_IMAGE
    # argv before `<stage> --run /etc/kubetune/run.json`; tests point it at a tiny stage program.
    job_command: tuple[str, ...] = DEFAULT_JOB_COMMAND
    job_image_pull_policy: str = "IfNotPresent"
    job_service_account: str = "kubetune-job"
    store_uri: str | None = None  # used when a run's spec.storage.uri is omitted
    store_endpoint: str | None = None
    store_region: str | None = None
    store_path_style: bool = False
    credentials_secret: str | None = None  # Secret with AWS_* keys for runs that name none
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    queue_name: str | None = None  # Kueue LocalQueue for every stage unless the run names one
    priority_class_name: str | None = None
    train_gpus: int = 1  # nvidia.com/gpu for the train stage when the run does not say
    backoff_limit: int = 2
    ttl_seconds_after_finished: int = 7 * 24 * 3600
    namespaces: tuple[str, ...] = ()  # empty: every namespace (cluster-wide)
    reconcile_interval: float = 3.0  # seconds between timer reconciles of an active run
    # A Job of a previous spec that still holds its stage is deleted after this long (the run's annotation
    # kubetune.dev/replace-superseded-jobs: "true" deletes it at once).
    superseded_job_grace: float = 600.0
    metrics_port: int = 9090  # 0 disables the metrics server
    health_port: int = 8080  # kopf liveness endpoint at /healthz; 0 disables it
    web_port: int = 0  # the read-only web view of runs (operator/web.py); 0 disables it
    standalone: bool = True  # no kopf peering (one replica; see docs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        source = os.environ if env is None else env
        reader = _Reader(source)
        defaults = cls()
        return cls(
            job_image=reader.text("KUBETUNE_JOB_IMAGE", defaults.job_image),
            job_command=tuple(reader.string_list("KUBETUNE_JOB_COMMAND", list(defaults.job_command))),
            job_image_pull_policy=reader.choice("KUBETUNE_JOB_IMAGE_PULL_POLICY", defaults.job_image_pull_policy,
                                                ("Always", "IfNotPresent", "Never")),
            job_service_account=reader.text("KUBETUNE_JOB_SERVICE_ACCOUNT", defaults.job_service_account),
            store_uri=reader.optional("KUBETUNE_STORE_URI"),
            store_endpoint=reader.optional("KUBETUNE_STORE_ENDPOINT"),
            store_region=reader.optional("KUBETUNE_STORE_REGION"),
            store_path_style=reader.boolean("KUBETUNE_STORE_PATH_STYLE", defaults.store_path_style),
            credentials_secret=reader.optional("KUBETUNE_STORE_CREDENTIALS_SECRET"),
            node_selector=reader.string_map("KUBETUNE_NODE_SELECTOR"),
            tolerations=tuple(Toleration.model_validate(t) for t in reader.json("KUBETUNE_TOLERATIONS", [])),
            queue_name=reader.optional("KUBETUNE_QUEUE_NAME"),
            priority_class_name=reader.optional("KUBETUNE_PRIORITY_CLASS_NAME"),
            train_gpus=reader.integer("KUBETUNE_TRAIN_GPUS", defaults.train_gpus, minimum=0),
            backoff_limit=reader.integer("KUBETUNE_BACKOFF_LIMIT", defaults.backoff_limit, minimum=0),
            ttl_seconds_after_finished=reader.integer(
                "KUBETUNE_JOB_TTL_SECONDS", defaults.ttl_seconds_after_finished, minimum=0),
            namespaces=tuple(n for n in reader.text("KUBETUNE_NAMESPACES", "").replace(",", " ").split() if n),
            reconcile_interval=reader.number("KUBETUNE_RECONCILE_INTERVAL", defaults.reconcile_interval, minimum=0.5),
            superseded_job_grace=reader.number("KUBETUNE_SUPERSEDED_JOB_GRACE_SECONDS", defaults.superseded_job_grace,
                                               minimum=0),
            metrics_port=reader.integer("KUBETUNE_METRICS_PORT", defaults.metrics_port, minimum=0),
            health_port=reader.integer("KUBETUNE_HEALTH_PORT", defaults.health_port, minimum=0),
            web_port=reader.integer("KUBETUNE_WEB_PORT", defaults.web_port, minimum=0),
            standalone=reader.boolean("KUBETUNE_STANDALONE", defaults.standalone),
        )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def optional(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise SettingsError(f"{name}={value!r}: must be one of {', '.join(allowed)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.optional(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={value!r}: must be true or false")

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.optional(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r}: must be an integer") from None
        if number < minimum:
            raise SettingsError(f"{name}={value!r}: must be >= {minimum}")
        return number

    def number(self, name: str, default: float, *, minimum: float) -> float:
        value = self.optional(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r}: must be a number") from None
        if number < minimum:
            raise SettingsError(f"{name}={value!r}: must be >= {minimum}")
        return number

    def json(self, name: str, default: Any) -> Any:
        value = self.optional(name)
        if value is None:
            return default
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{name}: not valid JSON: {error}") from None

    def string_list(self, name: str, default: list[str]) -> list[str]:
        value = self.json(name, default)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise SettingsError(f"{name}: must be a JSON array of non-empty strings")
        return value

    def string_map(self, name: str) -> dict[str, str]:
        value = self.json(name, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise SettingsError(f"{name}: must be a JSON object of strings")
        return value
