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
    Resolve,
    ResumeJob,
    SuspendJob,
    Wait,
    job_name,
    plan,
)
from kubetune.sources import SOURCES, Sources
from kubetune.stages import StageRef, resolution_ref, stage_ref
from tests.fixtures.sources import example_sources

NS, RUN = "default", "demo"

DEFAULT_STAGES = [s for s in STAGES if s != "publish"]  # publish runs only when spec.publish asks


class World:
    """What an executor would observe, evolved step by step as jobs run and publish."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.spec = validate_spec(spec or {})
        self.outputs: dict[str, Output] = {}
        self.looked_up: set[str] = set()
        self.jobs: list[JobState] = []
        self.sources: Sources | None = example_sources()
        self.resolve: StageRef | None = None
        self.same_content: set[str] = set()  # stages whose output comes out byte-identical whatever their key

    def observed(self) -> Observed:
        return Observed(dict(self.outputs), frozenset(self.looked_up), tuple(self.jobs), self.sources, self.resolve)

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
            content = "same" if job.stage in self.same_content else job.key[:6]
            self.outputs[job.key] = Output(job.key, f"digest-of-{job.stage}-{content}")

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
    assert World().run_to_completion() == DEFAULT_STAGES


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
    assert {p.stages[s].phase for s in DEFAULT_STAGES} == {"Cached"}


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
    digests, sources = {"dataset": "d"}, example_sources()
    before, after = stage_ref(NS, RUN, spec, "train", digests, sources), stage_ref(NS, RUN, more, "train", digests,
                                                                                  sources)
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
    assert [p.stages[s].phase for s in STAGES] == ["Succeeded", "Succeeded", "Failed", "Pending", "Pending", "Pending"]


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


# --- content addressing: what an input edit re-runs -----------------------------------------------------------------


def completed(spec: dict[str, Any] | None = None) -> World:
    world = World(spec)
    world.run_to_completion()
    return world


def test_an_unchanged_rerun_reruns_nothing() -> None:
    world = completed()
    world.sources = example_sources()  # resolved again: the same content
    assert world.run_to_completion() == []


def test_an_edited_dataset_file_reruns_the_dataset_and_every_stage_after_it() -> None:
    world = completed()
    world.sources = example_sources(dataset="tree-2")
    assert world.run_to_completion() == DEFAULT_STAGES


def test_a_dataset_rebuilt_to_identical_files_reruns_nothing_after_it() -> None:
    world = World()
    world.same_content = {"dataset"}
    world.run_to_completion()
    world.sources = example_sources(dataset="tree-2")  # e.g. a topic file for a category the run leaves out
    assert world.run_to_completion() == ["dataset"]


def test_an_edited_chat_template_reruns_train_onward_but_not_the_dataset() -> None:
    world = completed()
    world.sources = example_sources(template="template-2")
    assert world.run_to_completion() == ["train", "merge", "convert", "evaluate"]


def test_changed_model_weights_rerun_the_dataset_for_its_token_stats_and_train_onward() -> None:
    world = completed()
    world.sources = example_sources(model="model-2")
    assert world.run_to_completion() == DEFAULT_STAGES
    without_stats = completed({"dataset": {"tokenStats": False}})
    without_stats.sources = example_sources(model="model-2")
    assert without_stats.run_to_completion() == ["train", "merge", "convert", "evaluate"]


def test_an_edit_of_evaluate_prompts_reruns_only_evaluate() -> None:
    world = completed()
    world.spec = validate_spec({"evaluate": {"prompts": [{"prompt": "Who are you?", "expectContains": ["assistant"]}]}})
    assert world.run_to_completion() == ["evaluate"]


# --- resolving the sources ------------------------------------------------------------------------------------------


def test_without_resolved_sources_the_plan_is_to_resolve_them_and_no_stage_has_a_key_yet() -> None:
    world = World()
    world.sources = None
    p = world.plan()
    assert isinstance(p.action, Resolve)
    assert all(view.phase == "Pending" and view.ref is None for view in p.stages.values())


def resolving_world(spec: dict[str, Any] | None = None) -> World:
    world = World(spec)
    world.sources = None
    world.resolve = resolution_ref(NS, RUN, world.spec, uid="u1", image="job:1", refresh="")
    return world


def test_resolution_by_job_looks_for_an_earlier_one_then_runs_the_sources_job_then_the_stages() -> None:
    world = resolving_world()
    lookup = world.plan().action
    assert isinstance(lookup, Lookup) and lookup.stage == SOURCES and lookup.ref == world.resolve
    create = world.settle().action
    assert isinstance(create, CreateJob) and create.stage == SOURCES
    assert create.name == job_name(RUN, SOURCES, create.ref.key, 1)
    job = world.start(create)
    wait = world.settle()
    assert isinstance(wait.action, Wait) and wait.sources.phase == "Running"
    world.finish(job, publish=False)
    world.sources = example_sources()  # the executor read what the Job published
    after = world.settle()
    assert isinstance(after.action, CreateJob) and after.action.stage == "dataset"
    assert after.sources.phase == "Succeeded" and after.sources.job is not None


def test_a_resolution_found_from_an_earlier_pass_is_cached_and_starts_no_job() -> None:
    world = resolving_world()
    world.sources = example_sources()
    p = world.settle()
    assert isinstance(p.action, CreateJob) and p.action.stage == "dataset"
    assert p.sources.phase == "Cached"


def test_a_sources_job_that_fails_on_bad_input_fails_the_run_without_retry() -> None:
    world = resolving_world()
    create = world.settle().action
    assert isinstance(create, CreateJob)
    world.finish(world.start(create), publish=False, phase="Failed", config_error=True,
                 message="spec.dataset.uri: /data/tree is not a folder")
    failed = world.settle()
    assert isinstance(failed.action, Fail) and failed.action.stage == SOURCES
    assert "spec.dataset.uri" in failed.action.reason and failed.sources.phase == "Failed"


def test_a_suspended_run_resolves_nothing() -> None:
    world = resolving_world({"suspend": True})
    action = world.settle().action
    assert isinstance(action, Idle) and action.stage == SOURCES
