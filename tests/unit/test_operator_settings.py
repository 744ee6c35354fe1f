"""Operator settings from environment variables (what the Helm chart sets), and the Prometheus metrics."""

from __future__ import annotations

import pytest

from kubetune.api.types import Toleration
from kubetune.operator.metrics import Metrics
from kubetune.operator.rbac import RULES, allows
from kubetune.operator.settings import DEFAULT_JOB_COMMAND, OperatorSettings, SettingsError
from kubetune.operator.status import Transition


def test_without_any_variable_the_defaults_apply() -> None:
    assert OperatorSettings.from_env({}) == OperatorSettings()
    assert OperatorSettings().job_command == DEFAULT_JOB_COMMAND


def test_every_variable_is_read_and_typed() -> None:
    settings = OperatorSettings.from_env({
        "KUBETUNE_JOB_IMAGE": "registry.local/kt-job:1",
        "KUBETUNE_JOB_COMMAND": '["python", "/opt/stage.py"]',
        "KUBETUNE_JOB_IMAGE_PULL_POLICY": "Always",
        "KUBETUNE_JOB_SERVICE_ACCOUNT": "jobs",
        "KUBETUNE_STORE_URI": "s3://artifacts/runs",
        "KUBETUNE_STORE_ENDPOINT": "http://minio:9000",
        "KUBETUNE_STORE_REGION": "eu-west-1",
        "KUBETUNE_STORE_PATH_STYLE": "true",
        "KUBETUNE_STORE_CREDENTIALS_SECRET": "kubetune-s3",
        "KUBETUNE_NODE_SELECTOR": '{"pool": "batch"}',
        "KUBETUNE_TOLERATIONS": '[{"key": "batch", "operator": "Exists"}]',
        "KUBETUNE_QUEUE_NAME": "team-queue",
        "KUBETUNE_PRIORITY_CLASS_NAME": "batch",
        "KUBETUNE_TRAIN_GPUS": "0",
        "KUBETUNE_BACKOFF_LIMIT": "4",
        "KUBETUNE_JOB_TTL_SECONDS": "3600",
        "KUBETUNE_NAMESPACES": "ml-team, research",
        "KUBETUNE_RECONCILE_INTERVAL": "2.5",
        "KUBETUNE_SUPERSEDED_JOB_GRACE_SECONDS": "90",
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_HEALTH_PORT": "8081",
        "KUBETUNE_STANDALONE": "false",
    })
    assert settings == OperatorSettings(
        job_image="registry.local/kt-job:1", job_command=("python", "/opt/stage.py"), job_image_pull_policy="Always",
        job_service_account="jobs", store_uri="s3://artifacts/runs", store_endpoint="http://minio:9000",
        store_region="eu-west-1", store_path_style=True, credentials_secret="kubetune-s3",
        node_selector={"pool": "batch"}, tolerations=(Toleration(key="batch", operator="Exists"),),
        queue_name="team-queue", priority_class_name="batch", train_gpus=0, backoff_limit=4,
        ttl_seconds_after_finished=3600, namespaces=("ml-team", "research"), reconcile_interval=2.5,
        superseded_job_grace=90.0,
        metrics_port=0, health_port=8081, standalone=False,
    )


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("KUBETUNE_TRAIN_GPUS", "one", "must be an integer"),
    ("KUBETUNE_BACKOFF_LIMIT", "-1", "must be >= 0"),
    ("KUBETUNE_RECONCILE_INTERVAL", "0.1", "must be >= 0.5"),
    ("KUBETUNE_SUPERSEDED_JOB_GRACE_SECONDS", "-1", "must be >= 0"),
    ("KUBETUNE_STANDALONE", "maybe", "must be true or false"),
    ("KUBETUNE_JOB_COMMAND", "python -m x", "not valid JSON"),
    ("KUBETUNE_JOB_COMMAND", "[]", "non-empty strings"),
    ("KUBETUNE_NODE_SELECTOR", '{"a": 1}', "JSON object of strings"),
    ("KUBETUNE_JOB_IMAGE_PULL_POLICY", "Sometimes", "must be one of"),
])
def test_a_bad_value_names_the_variable_and_the_problem(name: str, value: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem) as raised:
        OperatorSettings.from_env({name: value})
    assert name in str(raised.value)


@pytest.mark.parametrize(("verb", "group", "resource", "allowed"), [
    ("patch", "kubetune.dev", "finetuneruns/status", True),
    ("watch", "kubetune.dev", "finetuneruns", True),
    ("create", "batch", "jobs", True),
    ("patch", "batch", "jobs", True),
    ("create", "", "configmaps", True),
    ("create", "", "events", True),
    ("get", "", "secrets", True),  # spec.notify's webhook URLs, one Secret by name (credentials reach jobs as secretKeyRef)
    ("list", "", "secrets", False),
    ("watch", "", "secrets", False),
    ("list", "", "pods", True),  # why a stage Job's pods do not start
    ("list", "", "events", True),  # ... or cannot be created (the Job controller's FailedCreate)
    ("get", "", "pods", False),
    ("watch", "", "pods", False),
    ("delete", "", "pods", False),
    ("update", "", "configmaps", False),
    ("delete", "kubetune.dev", "finetuneruns", False),
])
def test_the_rbac_rules_grant_exactly_the_operators_calls(verb: str, group: str, resource: str,
                                                           allowed: bool) -> None:
    assert allows(verb, group, resource) is allowed
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in RULES)


def test_metrics_count_jobs_retries_failures_durations_and_runs_by_phase() -> None:
    metrics = Metrics()
    metrics.job_created("train", 1)
    metrics.job_created("train", 2)
    metrics.run_phase("ns", "a", "Running")
    metrics.run_phase("ns", "b", "Running")
    metrics.run_phase("ns", "b", "Failed")
    metrics.transitions(
        (Transition("Normal", "StageSucceeded", "merge: done", "merge"),
         Transition("Warning", "StageFailed", "train: boom", "train")),
        {"merge": {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:30Z"}})
    sample = metrics.registry.get_sample_value
    assert sample("kubetune_job_creations_total", {"stage": "train"}) == 2
    assert sample("kubetune_job_retries_total", {"stage": "train"}) == 1
    assert sample("kubetune_stage_failures_total", {"stage": "train"}) == 1
    assert sample("kubetune_stage_duration_seconds_sum", {"stage": "merge"}) == 90
    assert (sample("kubetune_runs", {"phase": "Running"}), sample("kubetune_runs", {"phase": "Failed"})) == (1, 1)
    metrics.run_phase("ns", "b", None)
    assert sample("kubetune_runs", {"phase": "Failed"}) == 0
