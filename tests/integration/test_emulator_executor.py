"""The Job executor behaves like kubelet + the Job controller: processes, env, volumes, suspend, retries, policies."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fixtures.kube import job_executor, kube  # noqa: F401 - fixtures, until tests/conftest.py registers them
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor, instant_command, job_logs
from tests.kube.samples import job

pytestmark = pytest.mark.integration

# A container that notes SIGTERM in a file under the mounted volume, then exits 143 like our jobs do.
TRAPS_SIGTERM = (
    "import signal,sys,time\n"
    "def stop(*_):\n"
    "    open(sys.argv[1], 'w').write('terminated'); sys.exit(143)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('started', flush=True)\n"
    "time.sleep(60)\n"
)
IGNORES_SIGTERM = "import signal,time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('started', flush=True)\ntime.sleep(60)\n"


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == kind and item["status"] == "True":
            return dict(item)
    return None


def wait_condition(kube: KubeEmulator, name: str, kind: str, timeout: float = 20) -> dict[str, Any]:  # noqa: F811
    obj = kube.wait_for("jobs", name, lambda o: condition(o, kind) is not None, timeout=timeout)
    assert obj is not None
    return obj


def settle(kube: KubeEmulator) -> None:  # noqa: F811
    """The executor handles watch events in order, so once a Job created now has completed, every event about the
    Jobs before it has been handled, and any attempt such an event started has been recorded."""
    kube.create(job("barrier", instant_command()))
    wait_condition(kube, "barrier", "Complete")


def wait_until(check: Any, timeout: float = 20) -> None:
    """Poll a condition on the executor's side (process output), which no API change signals."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait_started(executor: JobExecutor, name: str) -> None:
    def started() -> bool:
        attempts = executor.attempts(name)
        return bool(attempts) and attempts[-1].stdout.exists() and "started" in attempts[-1].stdout.read_text()

    wait_until(started)


def test_a_job_runs_with_env_secrets_config_and_rewritten_mount_paths(
    kube: KubeEmulator, job_executor: JobExecutor,  # noqa: F811
) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "store"},
                 "stringData": {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}})
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "run"},
                 "data": {"run.json": '{"stage": "train"}', "level": "debug"}})
    script = ("import json,os,sys;cfg=json.load(open(sys.argv[1]));"
              "print(cfg['stage'], os.environ['STAGE'], os.environ['AWS_SECRET_ACCESS_KEY'], os.environ['LEVEL'],"
              " os.environ['POD'])")
    kube.create(job(
        "ok", ["python", "-c", script, "/etc/kubetune/run.json"],
        env=[{"name": "STAGE", "value": "train"},
             {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "store", "key": "AWS_SECRET_ACCESS_KEY"}}},
             {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "run", "key": "level"}}},
             {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        volumes=[{"name": "config", "configMap": {"name": "run"}}],
        volume_mounts=[{"name": "config", "mountPath": "/etc/kubetune", "readOnly": True}],
    ))
    done = wait_condition(kube, "ok", "Complete")
    status = done["status"]
    assert (status["succeeded"], status["active"]) == (1, 0) and status["startTime"] and status["completionTime"]
    [attempt] = job_executor.attempts("ok")
    assert attempt.stdout.read_text().split() == ["train", "train", "s3cr3t", "debug", attempt.pod_name]
    assert "/etc/kubetune" not in " ".join(attempt.argv)
    pod = kube.get("pods", attempt.pod_name)
    assert pod["status"]["phase"] == "Succeeded" and pod["metadata"]["labels"]["job-name"] == "ok"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]


def test_a_suspended_job_does_not_start_until_resumed(kube: KubeEmulator, job_executor: JobExecutor) -> None:  # noqa: F811
    kube.create(job("later", instant_command(), suspend=True))
    suspended = wait_condition(kube, "later", "Suspended")
    assert "startTime" not in suspended["status"] and job_executor.attempts("later") == []
    kube.patch("jobs", "later", {"spec": {"suspend": False}})
    done = wait_condition(kube, "later", "Complete")
    resumed = next(c for c in done["status"]["conditions"] if c["type"] == "Suspended")
    assert (resumed["status"], resumed["reason"]) == ("False", "JobResumed")


def test_suspending_a_running_job_sends_sigterm_and_resuming_starts_a_new_pod(
    kube: KubeEmulator, job_executor: JobExecutor,  # noqa: F811
) -> None:
    kube.create(job("train", ["python", "-c", TRAPS_SIGTERM, "/scratch/stopped"],
                    volumes=[{"name": "scratch", "emptyDir": {}}],
                    volume_mounts=[{"name": "scratch", "mountPath": "/scratch"}]))
    wait_started(job_executor, "train")
    kube.patch("jobs", "train", {"spec": {"suspend": True}})
    suspended = wait_condition(kube, "train", "Suspended")
    assert suspended["status"]["active"] == 0 and suspended["status"].get("failed", 0) == 0
    [first] = job_executor.attempts("train")
    assert (first.exit_code, first.reason) == (143, "Suspended")
    assert (first.directory / "volumes" / "scratch" / "stopped").read_text() == "terminated"
    assert kube.find("pods", first.pod_name) is None
    kube.patch("jobs", "train", {"spec": {"suspend": False}})
    wait_until(lambda: len(job_executor.attempts("train")) == 2)
    kube.delete("jobs", "train", propagation_policy="Background")


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    kube: KubeEmulator, job_executor: JobExecutor,  # noqa: F811
) -> None:
    kube.create(job("stubborn", ["python", "-c", IGNORES_SIGTERM], grace_seconds=1))
    wait_started(job_executor, "stubborn")
    kube.patch("jobs", "stubborn", {"spec": {"suspend": True}})
    wait_condition(kube, "stubborn", "Suspended")
    [attempt] = job_executor.attempts("stubborn")
    assert attempt.exit_code == 137


def test_failures_retry_up_to_the_backoff_limit_with_the_last_stderr_line_as_message(
    kube: KubeEmulator, job_executor: JobExecutor,  # noqa: F811
) -> None:
    kube.create(job("flaky", instant_command(exit_code=1, stderr="noise\nout of memory\n"), backoff_limit=2))
    failed = wait_condition(kube, "flaky", "Failed")
    assert failed["status"]["failed"] == 3
    assert condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"  # type: ignore[index]
    attempts = job_executor.attempts("flaky")
    assert [a.exit_code for a in attempts] == [1, 1, 1]
    assert attempts[-1].termination_message == "out of memory"
    pod = kube.get("pods", attempts[-1].pod_name)
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "out of memory"
    assert "out of memory" in job_logs(job_executor, "flaky")


def test_a_success_after_failures_completes_the_job(kube: KubeEmulator, tmp_path: Any) -> None:  # noqa: F811
    counter = tmp_path / "runs"
    script = (f"import pathlib,sys;p=pathlib.Path({str(counter)!r});n=len(p.read_text()) if p.exists() else 0;"
              "p.write_text('x'*(n+1));sys.exit(0 if n>=2 else 1)")
    with JobExecutor(kube, tmp_path / "executor"):
        kube.create(job("third-time", ["python", "-c", script], backoff_limit=5))
        done = wait_condition(kube, "third-time", "Complete")
    assert (done["status"]["failed"], done["status"]["succeeded"]) == (2, 1)


@pytest.mark.parametrize(("exit_code", "attempts", "reason"), [
    (2, 1, "PodFailurePolicy"),  # FailJob: configuration errors are never retried
    (3, 2, "BackoffLimitExceeded"),  # Count: retried until the backoff limit
])
def test_pod_failure_policy_on_exit_codes(
    kube: KubeEmulator, job_executor: JobExecutor, exit_code: int, attempts: int, reason: str,  # noqa: F811
) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}},
                        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}}]}
    kube.create(job("policy", instant_command(exit_code=exit_code), backoff_limit=1, podFailurePolicy=policy))
    failed = wait_condition(kube, "policy", "Failed")
    settle(kube)
    assert len(job_executor.attempts("policy")) == attempts
    assert failed["status"]["failed"] == attempts  # FailJob counts its pod too, in the same update as the condition
    assert kube.get("jobs", "policy")["status"] == failed["status"]
    message = condition(failed, "Failed")
    assert message is not None and message["reason"] == reason
    if reason == "PodFailurePolicy":
        assert "failed with exit code 2 matching FailJob rule at index 0" in message["message"]


@pytest.mark.parametrize(("exit_code", "backoff_limit", "outcome", "attempts", "counts"), [
    (0, 0, "Complete", 1, {"succeeded": 1}),
    (1, 0, "Failed", 1, {"failed": 1}),
    (1, 2, "Failed", 3, {"failed": 3}),
])
def test_a_finished_job_never_runs_again_and_its_final_status_stays(
    kube: KubeEmulator, job_executor: JobExecutor,  # noqa: F811
    exit_code: int, backoff_limit: int, outcome: str, attempts: int, counts: dict[str, int],
) -> None:
    """The watch events of the executor's own status writes arrive after the Job has finished; none of them may
    start another attempt or roll the status back (a second controller would restart counting from zero)."""
    kube.create(job("once", instant_command(exit_code=exit_code), backoff_limit=backoff_limit))
    finished = wait_condition(kube, "once", outcome)
    settle(kube)
    assert len(job_executor.attempts("once")) == attempts
    assert {key: finished["status"].get(key) for key in counts} == counts
    assert kube.get("jobs", "once")["status"] == finished["status"]


def test_a_retry_waits_its_backoff_delay_although_status_writes_wake_the_controller(
    kube: KubeEmulator, tmp_path: Any,  # noqa: F811
) -> None:
    stamps_its_start = "import sys,time;print(time.monotonic(),flush=True);sys.exit(1)"  # one clock for all processes
    with JobExecutor(kube, tmp_path / "executor", retry_delay=0.5) as executor:
        kube.create(job("backoff", ["python", "-c", stamps_its_start], backoff_limit=1))
        wait_condition(kube, "backoff", "Failed")
        first, second = (float(attempt.stdout.read_text()) for attempt in executor.attempts("backoff"))
    assert second - first >= 0.5  # retry_delay * 2**(failures-1) after the first failure


def test_preemption_with_an_ignore_rule_retries_without_counting_a_failure(
    kube: KubeEmulator, job_executor: JobExecutor,  # noqa: F811
) -> None:
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    kube.create(job("preempted", ["python", "-c", TRAPS_SIGTERM, "/tmp/x"], backoff_limit=0, podFailurePolicy=policy,
                    volumes=[{"name": "tmp", "emptyDir": {}}], volume_mounts=[{"name": "tmp", "mountPath": "/tmp"}]))
    wait_started(job_executor, "preempted")
    assert job_executor.preempt("preempted", grace_seconds=5)
    wait_until(lambda: len(job_executor.attempts("preempted")) == 2)
    first = job_executor.attempts("preempted")[0]
    assert first.disrupted and first.exit_code == 143
    assert condition(kube.get("jobs", "preempted"), "Failed") is None
    assert kube.get("jobs", "preempted")["status"].get("failed", 0) == 0
    kube.delete("jobs", "preempted", propagation_policy="Background")


def test_active_deadline_fails_the_job_with_deadline_exceeded(kube: KubeEmulator, job_executor: JobExecutor) -> None:  # noqa: F811
    kube.create(job("slow", instant_command(sleep=30), activeDeadlineSeconds=1, grace_seconds=1))
    failed = wait_condition(kube, "slow", "Failed")
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]


def test_a_missing_secret_keeps_the_pod_waiting_until_it_exists(kube: KubeEmulator, job_executor: JobExecutor) -> None:  # noqa: F811
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    kube.create(job("waits", ["python", "-c", "import os;print(os.environ['TOKEN'])"], env=env))
    wait_until(lambda: bool(job_executor.attempts("waits")))
    pod_name = job_executor.attempts("waits")[0].pod_name
    pod = kube.wait_for("pods", pod_name, lambda p: bool(p and (p.get("status") or {}).get("containerStatuses")))
    assert pod is not None
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"}, "stringData": {"token": "t0k"}})
    wait_condition(kube, "waits", "Complete")
    assert job_executor.attempts("waits")[0].stdout.read_text().strip() == "t0k"


def test_rewrite_command_hook_and_ttl_after_finished(kube: KubeEmulator, tmp_path: Any) -> None:  # noqa: F811
    def instant(_job: dict[str, Any], _argv: list[str]) -> list[str]:
        return instant_command()

    with JobExecutor(kube, tmp_path / "executor", rewrite_command=instant):
        kube.create(job("heavy", ["python", "-m", "kubetune.jobs", "train", "--run", "/etc/kubetune/run.json"],
                        ttlSecondsAfterFinished=0))
        kube.wait_for("jobs", "heavy", lambda obj: obj is None, timeout=20)  # completed, then deleted by its TTL
