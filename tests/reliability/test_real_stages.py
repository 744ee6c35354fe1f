"""Real stages under fire: ten FineTuneRuns of a tiny random-weight Llama (400-token BPE vocabulary) through every real
`python -m kubetune.jobs` stage (dataset, train, merge, convert, evaluate), while the operator (a subprocess) is SIGKILLed at random
moments and every train Job is preempted once at a random step — SIGTERM, then SIGKILL after a grace period that is
sometimes long enough to save and sometimes not.

Checked: every run Succeeded with outputs that verify, no duplicate Job, each train Job resumed in a new pod and lost
at most one checkpoint interval of steps (read from the job's own step log and its "resuming from" line), and the
final trainer state holds every step exactly once.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubetune.store import join_key, open_store, read_manifest
from tests.fixtures.tiny_models import build_tiny_model, repo_root, small_bpe_tokenizer_dir
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import Attempt, JobExecutor
from tests.reliability.bed import (
    JOBS_PER_RUN,
    PREFIX_ANNOTATION,
    STAGE_LABEL,
    KillSchedule,
    OperatorProcess,
    duplicate_jobs,
    install_crd,
    operator_environment,
    output_problems,
    run_manifest,
    stage_jobs,
    succeeded,
    wait_all,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

RUNS = 10
STEPS = 30
CHECKPOINT_EVERY = 5
SEED = 1125
GRACE_S = (0.05, 0.3, 15.0)  # SIGKILL before or during the save, or after a clean SIGTERM save
OPERATOR_KILLS = 5
# Ten torch processes share two cores: one intra-op thread each, as a CPU limit of 1 would give them in a cluster.
JOB_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEP_LINE = re.compile(r"kubetune\.jobs\.train: step (\d+)/")
RESUME_LINE = re.compile(r"resuming from checkpoint-\d+ at step (\d+)")


def tiny_model() -> Path:
    cache = repo_root() / ".cache" / "test-models"
    return build_tiny_model("llama", cache / "reliability-llama-bpe400",
                            tokenizer_dir=small_bpe_tokenizer_dir(cache / "small-bpe-400"))


def logged_steps(attempt: Attempt) -> list[int]:
    return [int(step) for step in STEP_LINE.findall(attempt.stderr.read_text(errors="replace"))]


@dataclass
class Preemption:
    job: str
    at_step: int  # preempt once the job has logged this step
    grace_s: float
    done: bool = False


class Preemptor:
    """Preempts each run's train Job once, when its log shows the chosen step."""

    def __init__(self, kube: KubeEmulator, executor: JobExecutor, rng: random.Random) -> None:
        self.kube, self.executor, self.rng = kube, executor, rng
        self.plans: dict[str, Preemption] = {}

    def __call__(self) -> None:
        for job in stage_jobs(self.kube):
            name = job["metadata"]["name"]
            if job["metadata"]["labels"][STAGE_LABEL] != "train":
                continue
            plan = self.plans.setdefault(name, Preemption(name, self.rng.randint(2, 16), self.rng.choice(GRACE_S)))
            attempts = self.executor.attempts(name)
            if plan.done or len(attempts) != 1 or not attempts[0].stderr.exists():
                continue
            if max(logged_steps(attempts[0]), default=0) >= plan.at_step:
                plan.done = self.executor.preempt(name, grace_seconds=plan.grace_s)


@pytest.fixture
def operator(kube: KubeEmulator, kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    install_crd(kube)
    process = OperatorProcess(operator_environment(kubeconfig, ("python", "-m", "kubetune.jobs")),
                              tmp_path / "operator.log")
    yield process
    process.stop()


def test_real_tiny_model_runs_survive_operator_sigkills_and_train_preemptions(
    kube: KubeEmulator, operator: OperatorProcess, tmp_path: Path
) -> None:
    model = tiny_model()
    store_uri = (tmp_path / "store").as_uri()
    spec = {
        "baseModel": {"uri": model.as_uri()},
        "dataset": {"categories": ["logic"], "maxSeqLength": 64},
        "training": {"method": "lora", "device": "cpu", "maxSteps": STEPS, "batchSize": 2, "loggingSteps": 1,
                     "evalPrompts": [], "checkpoint": {"everySteps": CHECKPOINT_EVERY, "keep": 2}},
        "evaluate": {"prompts": []},
    }
    names = [f"real-{i}" for i in range(RUNS)]
    rng = random.Random(SEED)
    with JobExecutor(kube, tmp_path / "executor", extra_env=JOB_ENV) as executor:
        operator.start()
        for name in names:
            kube.create(run_manifest(name, {"uri": store_uri}, **spec))
        kills = KillSchedule(kube, operator, rng, OPERATOR_KILLS, (2.0, 10.0))
        preemptor = Preemptor(kube, executor, rng)

        def disturb() -> None:
            kills()
            preemptor()

        try:
            runs = wait_all(kube, names, succeeded, timeout=360, while_waiting=disturb)
        except TimeoutError as error:
            raise AssertionError(f"{error}\noperator log:\n{operator.log_tail()}") from None
        jobs = stage_jobs(kube)
        train_attempts = {job["metadata"]["name"]: executor.attempts(job["metadata"]["name"]) for job in jobs
                          if job["metadata"]["labels"][STAGE_LABEL] == "train"}
        other_pods = [len(executor.attempts(job["metadata"]["name"])) for job in jobs
                      if job["metadata"]["labels"][STAGE_LABEL] != "train"]

    store = open_store(store_uri)
    report = []
    for job in [j for j in jobs if j["metadata"]["labels"][STAGE_LABEL] == "train"]:
        name = job["metadata"]["name"]
        plan, attempts = preemptor.plans[name], train_attempts[name]
        assert plan.done and len(attempts) == 2 and attempts[0].disrupted, (name, attempts)
        killed_at = max(logged_steps(attempts[0]))
        resumed = RESUME_LINE.search(attempts[1].stderr.read_text(errors="replace"))
        resumed_at = int(resumed.group(1)) if resumed else 0
        state = json.loads(store.get_bytes(join_key(job["metadata"]["annotations"][PREFIX_ANNOTATION],
                                                    "trainer_state.json")))
        report.append((name, plan.at_step, plan.grace_s, killed_at, resumed_at, attempts[0].exit_code))
        assert 0 <= killed_at - resumed_at <= CHECKPOINT_EVERY, (name, killed_at, resumed_at)
        assert [row["step"] for row in state["metrics"]] == list(range(1, STEPS + 1)), name
    lost = [killed - resumed for _, _, _, killed, resumed, _ in report]
    print(f"\n[real-stages] {RUNS} runs (every stage real) Succeeded; "
          f"operator SIGKILLs {operator.kills} after uptimes {kills.rounded_uptimes()} s; train preemptions "
          f"(job, target step, grace s, last logged step, resumed at, exit code): {sorted(report)}; steps lost per "
          f"preemption {lost} (max {max(lost)}, checkpoint interval {CHECKPOINT_EVERY})")
    assert operator.kills == OPERATOR_KILLS
    assert duplicate_jobs(jobs) == {}
    assert len(jobs) == RUNS * JOBS_PER_RUN and set(other_pods) == {1}
    assert [p for run in runs for p in output_problems(store, run, jobs)] == []
    for run in runs:
        merge = read_manifest(store, run["status"]["stages"]["merge"]["outputs"][0]["uri"].removeprefix(
            f"{store_uri}/").rsplit("/", 1)[0])
        assert merge is not None and merge.metadata["adapter"] == "final"
