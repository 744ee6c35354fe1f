"""The planner decides ordering, caching, resume, retry and suspension — from observations alone."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.types import STAGES
from kubetune.api.validate import validate_spec
from kubetune.planner import (
    MAX_ATTEMPTS,
    CreateJob,
    Done,
    Fail,
    Idle,
    JobState,
    Lookup,
    Observed,
    Output,
    Plan,
    ResumeJob,
    SuspendJob,
    Wait,
    job_name,
    plan,
)
from kubetune.stages import stage_ref

NS, RUN = "default", "demo"


class World:
    """What an executor would observe, evolved step by step as jobs run and publish."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.spec = validate_spec(spec or {})
        self.outputs: dict[str, Output] = {}
        self.looked_up: set[str] = set()
        self.jobs: list[JobState] = []

    def observed(self) -> Observed:
        return Observed(dict(self.outputs), frozenset(self.looked_up), tuple(self.jobs))

    def plan(self) -> Plan:
        return plan(NS, RUN, self.spec, self.observed())

    def settle(self) -> Plan:
        """Answer lookups (nothing published yet) until the planner asks for something else."""
        while isinstance(action := self.plan().action, Lookup):
            self.looked_up.add(action.ref.key)
        return self.plan()

    def start(self, action: CreateJob, phase: str = "Running") -> JobState:
        job = JobState(action.name, action.stage, action.ref.key, action.attempt, phase)  # type: ignore[arg-type]
        self.jobs.append(job)
        return job

    def finish(self, job: JobState, *, publish: bool = True, phase: str = "Succeeded", **extra: Any) -> None:
        self.jobs[self.jobs.index(job)] = JobState(job.name, job.stage, job.key, job.attempt, phase, **extra)  # type: ignore[arg-type]
        if publish:
            self.outputs[job.key] = Output(job.key, f"digest-of-{job.stage}-{job.key[:6]}")

    def run_to_completion(self) -> list[str]:
        created: list[str] = []
        while True:
            action = self.settle().action
            if isinstance(action, Done):
                return created
            assert isinstance(action, CreateJob), action
            created.append(action.stage)
            self.finish(self.start(action))


def test_a_new_run_looks_up_the_dataset_output_first() -> None:
    action = World().plan().action
    assert isinstance(action, Lookup) and action.stage == "dataset"
    assert action.ref.prefix.startswith("default/demo/dataset/")


def test_stages_run_in_order_one_job_each() -> None:
    assert World().run_to_completion() == list(STAGES)


def test_evaluate_is_skipped_when_disabled() -> None:
    assert World({"evaluate": {"enabled": False}}).run_to_completion() == ["dataset", "train", "merge", "convert"]


def test_a_running_job_is_waited_for_not_duplicated() -> None:
    world = World()
    action = world.settle().action
    assert isinstance(action, CreateJob)
    job = world.start(action)
    for _ in range(3):
        again = world.settle().action
        assert isinstance(again, Wait) and again.job == job.name


def test_published_outputs_are_reused_as_cached() -> None:
    world = World()
    world.run_to_completion()
    fresh = World()
    fresh.outputs = dict(world.outputs)
    p = fresh.settle()
    assert isinstance(p.action, Done)
    assert {v.phase for v in p.stages.values()} == {"Cached"}


def test_an_output_published_by_a_job_of_ours_still_finishing_is_succeeded_not_cached() -> None:
    world = World()
    action = world.settle().action
    assert isinstance(action, CreateJob)
    job = world.start(action)
    world.outputs[job.key] = Output(job.key, "digest-of-dataset")  # published; the Job is not Complete yet
    assert world.settle().stages["dataset"].phase == "Succeeded"


def test_a_spec_edit_reruns_only_the_affected_stage_and_those_after_it() -> None:
    world = World()
    world.run_to_completion()
    world.spec = validate_spec({"export": {"types": ["q8_0", "q4_k_m"]}})
    assert world.run_to_completion() == ["convert", "evaluate"]


def test_an_edit_to_training_reruns_train_and_everything_downstream() -> None:
    world = World()
    world.run_to_completion()
    world.spec = validate_spec({"training": {"learningRate": 1e-4}})
    assert world.run_to_completion() == ["train", "merge", "convert", "evaluate"]


def test_where_a_stage_runs_does_not_change_its_key() -> None:
    world = World()
    world.run_to_completion()
    world.spec = validate_spec({"training": {"device": "cpu"}, "resources": {"train": {"gpus": 2}}})
    assert world.run_to_completion() == []


def test_extra_epochs_rerun_train_in_the_same_folder_so_it_resumes() -> None:
    spec = validate_spec({})
    more = validate_spec({"training": {"extraEpochs": 1}})
    digests = {"dataset": "d"}
    before, after = stage_ref(NS, RUN, spec, "train", digests), stage_ref(NS, RUN, more, "train", digests)
    assert before.key != after.key
    assert before.prefix == after.prefix


def test_an_edit_while_a_stage_runs_waits_for_that_job_before_starting_another() -> None:
    world = World()
    first = world.settle().action
    assert isinstance(first, CreateJob)
    job = world.start(first)
    world.spec = validate_spec({"dataset": {"evalSplit": 0.1}})
    action = world.settle().action
    assert isinstance(action, Wait) and action.job == job.name
    world.finish(job)  # the old job publishes under the old key
    action = world.settle().action
    assert isinstance(action, CreateJob) and action.stage == "dataset" and action.ref.key != job.key


def test_a_failed_job_is_retried_with_a_new_deterministic_name_then_the_run_fails() -> None:
    world = World()
    names = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        action = world.settle().action
        assert isinstance(action, CreateJob) and action.attempt == attempt
        names.append(action.name)
        world.finish(world.start(action), publish=False, phase="Failed", message="OOMKilled")
    action = world.settle().action
    assert isinstance(action, Fail) and action.stage == "dataset" and "OOMKilled" in action.reason
    assert len(set(names)) == MAX_ATTEMPTS


def test_a_config_error_fails_the_run_without_retry() -> None:
    world = World()
    action = world.settle().action
    assert isinstance(action, CreateJob)
    world.finish(world.start(action), publish=False, phase="Failed", config_error=True,
                 message="topics/x.json:3:5: invalid JSON")
    failed = world.settle()
    assert isinstance(failed.action, Fail) and "x.json:3:5" in failed.action.reason
    assert failed.stages["dataset"].phase == "Failed"


def test_a_failure_keeps_earlier_stages_succeeded() -> None:
    world = World()
    for _ in range(2):  # dataset, train
        action = world.settle().action
        assert isinstance(action, CreateJob)
        world.finish(world.start(action))
    action = world.settle().action
    assert isinstance(action, CreateJob) and action.stage == "merge"
    world.finish(world.start(action), publish=False, phase="Failed", config_error=True, message="shape mismatch")
    p = world.settle()
    assert [p.stages[s].phase for s in STAGES] == ["Succeeded", "Succeeded", "Failed", "Pending", "Pending"]


def test_a_job_that_succeeded_without_publishing_is_a_failure() -> None:
    world = World()
    action = world.settle().action
    assert isinstance(action, CreateJob)
    world.finish(world.start(action), publish=False)
    assert isinstance(world.settle().action, Fail)


def test_suspend_suspends_the_running_job_and_resume_resumes_it() -> None:
    world = World()
    action = world.settle().action
    assert isinstance(action, CreateJob)
    job = world.start(action)
    world.spec = validate_spec({"suspend": True})
    suspend = world.settle().action
    assert isinstance(suspend, SuspendJob) and suspend.job == job.name
    world.jobs = [JobState(job.name, job.stage, job.key, job.attempt, "Suspended")]
    assert isinstance(world.settle().action, Wait)
    world.spec = validate_spec({})
    resume = world.settle().action
    assert isinstance(resume, ResumeJob) and resume.job == job.name


def test_suspend_with_nothing_running_creates_no_job() -> None:
    world = World({"suspend": True})
    action = world.settle().action
    assert isinstance(action, Idle) and world.plan().stages["dataset"].phase == "Suspended"


@pytest.mark.parametrize("stage", STAGES)
def test_job_names_are_deterministic_and_fit_kubernetes_limits(stage: str) -> None:
    key = "f" * 64
    longest_run = "r" * 40
    assert job_name(longest_run, stage, key, 1) == job_name(longest_run, stage, key, 1)
    assert len(job_name(longest_run, stage, key, MAX_ATTEMPTS)) <= 63
    assert job_name(RUN, stage, key, 1) != job_name(RUN, stage, key, 2)
