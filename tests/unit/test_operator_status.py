"""The FineTuneRun status from the planner's view, and the transitions that become Events."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.run_status import FineTuneRunStatus
from kubetune.api.types import STAGES, FineTuneRunSpec
from kubetune.operator.mergepatch import merge_patch
from kubetune.operator.observe import ObservedJob
from kubetune.operator.problems import Problem
from kubetune.operator.status import (
    MAX_STAGE_OUTPUTS,
    StatusInputs,
    compute_status,
    failed_plan,
)
from kubetune.planner import JobPhase, JobState, Observed, Output, Plan, plan
from kubetune.stages import StageRef, stage_ref
from kubetune.store import Manifest, ManifestFile, content_digest
from tests.fixtures.sources import example_sources

STORE = "s3://bucket/runs"
T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T00:09:00Z"
Obj = dict[str, Any]


def files_for(stage: str) -> tuple[ManifestFile, ...]:
    names = {
        "dataset": ["train_data.jsonl", "stats.json"],
        "train": ["adapter/adapter_model.safetensors", "loss.png"],
        "merge": ["model.safetensors", "config.json"],
        "convert": ["model-q8_0.gguf", "model-f16.gguf", "tokenizer/tokenizer.json", "lineage.json"],
        "evaluate": ["report.json", "answers/model-q8_0.txt", "lineage.json"],  # lineage: no artifact
    }[stage]
    return tuple(ManifestFile(name, 10 + i, f"{i:064x}") for i, name in enumerate(names))


class Scenario:
    """A run where `done` stages have outputs (those in `ran` made by a Job of ours, the others cached) and the
    next stage's Jobs are `jobs` (phases, oldest first)."""

    def __init__(self, done: int, jobs: tuple[JobPhase, ...] = (), spec: FineTuneRunSpec | None = None,
                 config_error: bool = False, message: str = "", ran: tuple[str, ...] = ()) -> None:
        self.spec = spec or FineTuneRunSpec()
        digests: dict[str, str] = {}
        self.refs: dict[str, StageRef] = {}
        self.manifests: dict[str, Manifest] = {}
        outputs: dict[str, Output] = {}
        enabled = [s for s in STAGES if s != "evaluate" or self.spec.evaluate.enabled]
        for stage in enabled[: done + 1]:
            ref = self.refs[stage] = stage_ref("ns", "demo", self.spec, stage, digests, example_sources())
            if len(self.manifests) < done:
                manifest = Manifest(stage, ref.key, T0, files_for(stage))
                self.manifests[stage] = manifest
                digests[stage] = content_digest(manifest)
                outputs[ref.key] = Output(ref.key, digests[stage])
        self.jobs: list[JobState] = []
        self.times: dict[str, ObservedJob] = {}
        for stage in ran:
            state = JobState(f"demo-{stage}-{self.refs[stage].key[:8]}", stage, self.refs[stage].key, 1, "Succeeded")
            self.jobs.append(state)
            self.times[state.name] = ObservedJob(state, start_time=T0, completion_time=T1)
        if done < len(enabled):
            stage = enabled[done]
            for attempt, phase in enumerate(jobs, start=1):
                name = f"demo-{stage}-{self.refs[stage].key[:8]}" + (f"-{attempt}" if attempt > 1 else "")
                state = JobState(name, stage, self.refs[stage].key, attempt, phase,
                                 config_error=config_error and phase == "Failed", message=message)
                self.jobs.append(state)
                finished = T2 if phase in ("Succeeded", "Failed") else None
                self.times[name] = ObservedJob(state, start_time=T1, completion_time=finished)
        self.plan = plan("ns", "demo", self.spec, Observed(outputs, frozenset(r.key for r in self.refs.values()),
                                                           tuple(self.jobs), example_sources()))

    def status(self, previous: Obj | None = None, *, now: str = T2, training: Obj | None = None,
               generation: int = 3, problem: Problem | None = None) -> tuple[Obj, list[tuple[str, str, str]]]:
        update = compute_status(StatusInputs(
            spec=self.spec, generation=generation, plan=self.plan, now=now, store_uri=STORE, jobs=self.times,
            manifests=self.manifests, training=training, previous=previous or {}, problem=problem))
        FineTuneRunStatus.model_validate(update.status)  # the shape the CRD's status schema accepts
        return update.status, [(t.type, t.reason, t.message) for t in update.transitions]


@pytest.mark.parametrize(("scenario", "phase", "stage", "text"), [
    (Scenario(0), "Pending", "dataset", "dataset pending"),
    (Scenario(0, ("Queued",)), "Queued", "dataset", "dataset queued"),
    (Scenario(1, ("Running",)), "Running", "train", "train running"),
    (Scenario(1, ("Running",), spec=FineTuneRunSpec(suspend=True)), "Suspended", "train", "train suspended"),
    (Scenario(1, ("Suspended",), spec=FineTuneRunSpec(suspend=True)), "Suspended", "train", "train suspended"),
    (Scenario(2, ("Failed",), config_error=True, message="bad adapter"), "Failed", "merge", "merge failed"),
    (Scenario(2, ("Failed",)), "Running", "merge", "merge running"),  # a retry is about to start
    (Scenario(5), "Succeeded", "evaluate", "done (5 stages)"),
    (Scenario(4, spec=FineTuneRunSpec.model_validate({"evaluate": {"enabled": False}})), "Succeeded", "convert",
     "done (4 stages)"),
])
def test_the_run_phase_current_stage_and_progress_text_follow_the_plan(scenario: Scenario, phase: str, stage: str,
                                                                       text: str) -> None:
    status, _ = scenario.status()
    assert (status["phase"], status["currentStage"], status["progressText"]) == (phase, stage, text)
    assert status["observedGeneration"] == 3


def test_a_failed_run_says_which_stage_failed_and_why_in_message_and_conditions() -> None:
    status, transitions = Scenario(2, ("Failed",), config_error=True, message="bad adapter").status()
    assert status["message"] == "stage merge failed: bad adapter"
    conditions = {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}
    assert conditions == {
        "Ready": ("False", "Failed", "stage merge failed: bad adapter"),
        "Progressing": ("False", "Failed", "stage merge failed: bad adapter"),
        "Failed": ("True", "StageFailed", "stage merge failed: bad adapter"),
        "Stalled": ("False", "NotStalled", ""),  # failed is not stalled: nothing will change it but a spec edit
        "StoreReachable": ("True", "StoreReachable", "the store answers"),
    }
    assert status["stages"]["merge"]["phase"] == "Failed" and status["stages"]["merge"]["message"] == "bad adapter"
    assert ("Warning", "StageFailed", f"merge: bad adapter (Job {status['stages']['merge']['jobName']})") in transitions
    assert ("Warning", "Failed", "stage merge failed: bad adapter") in transitions


def test_stage_blocks_carry_job_attempts_times_key_digest_and_outputs() -> None:
    scenario = Scenario(2, ("Failed", "Running"))
    status, _ = scenario.status()
    dataset, merge = status["stages"]["dataset"], status["stages"]["merge"]
    assert dataset["phase"] == "Cached"  # its output exists and no Job of ours made it
    assert dataset["inputKey"] == scenario.refs["dataset"].key
    assert dataset["outputDigest"] == content_digest(scenario.manifests["dataset"])
    assert dataset["completionTime"] == T0  # from the manifest
    assert dataset["outputs"] == [
        {"name": f.path, "uri": f"{STORE}/{scenario.refs['dataset'].prefix}/{f.path}", "size": f.size,
         "sha256": f.sha256} for f in sorted(files_for("dataset"), key=lambda f: f.path)]
    assert merge == {"phase": "Running", "jobName": scenario.jobs[-1].name, "attempts": 2, "startTime": T1,
                     "inputKey": scenario.refs["merge"].key, "outputs": []}
    assert status["stages"]["convert"] == {"phase": "Pending", "attempts": 0, "outputs": []}


def test_a_stage_with_many_files_lists_its_main_outputs_first() -> None:
    scenario = Scenario(1)
    many = tuple(ManifestFile(f"checkpoints/c{i:03d}/state.bin", 1, "0" * 64) for i in range(40))
    scenario.manifests["dataset"] = Manifest("dataset", scenario.refs["dataset"].key, T0,
                                             many + (ManifestFile("train_data.jsonl", 5, "1" * 64),))
    status, _ = scenario.status()
    names = [o["name"] for o in status["stages"]["dataset"]["outputs"]]
    assert len(names) == MAX_STAGE_OUTPUTS and "train_data.jsonl" in names


def test_a_succeeded_stage_stays_succeeded_after_its_job_is_cleaned_up() -> None:
    ran = Scenario(1, ("Running",))
    ran.manifests["train"] = Manifest("train", ran.refs["train"].key, T0, files_for("train"))
    finished = Scenario(2)  # the same run once the train Job was removed by its TTL
    previous = {"stages": {"train": {"phase": "Succeeded", "inputKey": finished.refs["train"].key,
                                     "jobName": "demo-train-x", "attempts": 1, "startTime": T1,
                                     "completionTime": T2}}}
    status, transitions = finished.status(previous)
    train = status["stages"]["train"]
    assert (train["phase"], train["jobName"], train["attempts"], train["startTime"], train["completionTime"]) == (
        "Succeeded", "demo-train-x", 1, T1, T2)
    assert not [t for t in transitions if t[1].startswith("Stage") and "train" in t[2]]


def test_training_progress_is_mirrored_with_a_percentage() -> None:
    progress = {"stage": "train", "phase": "Running", "updatedAt": T1, "step": 12, "totalSteps": 40,
                "epoch": 0.3, "loss": 1.25, "learningRate": 2e-4, "tokensPerSecond": 812.5, "etaSeconds": 95.4,
                "lastCheckpoint": "checkpoint-00000010"}
    status, _ = Scenario(1, ("Running",)).status(training=progress)
    assert status["progress"] == {"step": 12, "totalSteps": 40, "epoch": 0.3, "loss": 1.25, "learningRate": 2e-4,
                                  "tokensPerSecond": 812.5, "etaSeconds": 95, "lastCheckpoint":
                                  "checkpoint-00000010", "percent": 30}
    assert status["progressText"] == "train 12/40 (30%)"
    later, _ = Scenario(2, ("Running",)).status(previous=status)
    assert later["progress"] == status["progress"]  # kept once training is over


def test_the_held_out_loss_and_the_base_models_are_mirrored_into_the_progress() -> None:
    progress = {"stage": "train", "phase": "Running", "updatedAt": T1, "step": 10, "totalSteps": 40,
                "loss": 1.25, "evalLoss": 1.5, "baseEvalLoss": 2.75}
    status, _ = Scenario(1, ("Running",)).status(training=progress)
    assert (status["progress"]["evalLoss"], status["progress"]["baseEvalLoss"]) == (1.5, 2.75)


def test_the_artifacts_are_the_gguf_files_and_the_gates_report() -> None:
    scenario = Scenario(5)
    status, _ = scenario.status()
    assert [(a["name"], a["uri"]) for a in status["artifacts"]] == [
        ("model-q8_0.gguf", f"{STORE}/{scenario.refs['convert'].prefix}/model-q8_0.gguf"),
        ("model-f16.gguf", f"{STORE}/{scenario.refs['convert'].prefix}/model-f16.gguf"),
        ("report.json", f"{STORE}/{scenario.refs['evaluate'].prefix}/report.json"),
    ]


def test_an_unchanged_run_recomputes_the_same_status_and_no_transitions() -> None:
    scenario = Scenario(1, ("Running",))
    first, _ = scenario.status(now=T1)
    again, transitions = scenario.status(first, now=T2)
    assert again == first and transitions == []
    assert merge_patch(first, again) == {}


def test_conditions_keep_their_transition_time_while_their_status_holds() -> None:
    running, _ = Scenario(1, ("Running",)).status(now=T0, generation=1)
    later, _ = Scenario(2, ("Running",)).status(running, now=T1, generation=2)
    done, _ = Scenario(5).status(later, now=T2, generation=2)
    times = [{c["type"]: c["lastTransitionTime"] for c in s["conditions"]} for s in (running, later, done)]
    # values held; reasons/messages may change
    assert times[1] == {"Ready": T0, "Progressing": T0, "Failed": T0, "Stalled": T0, "StoreReachable": T0}
    assert times[2] == {"Ready": T2, "Progressing": T2, "Failed": T0, "Stalled": T0, "StoreReachable": T0}
    assert {c["observedGeneration"] for c in later["conditions"]} == {2}


def test_each_stage_transition_and_the_run_phase_change_become_events() -> None:
    before, _ = Scenario(1, ("Running",)).status()
    after, transitions = Scenario(2, ("Queued",), ran=("train",)).status(before)
    assert transitions == [
        ("Normal", "StageSucceeded", (f"train: output {after['stages']['train']['outputDigest'][:12]} published "
                                      f"(Job {after['stages']['train']['jobName']})")),
        ("Normal", "StageQueued", f"merge: waiting for admission (Job {after['stages']['merge']['jobName']})"),
        ("Normal", "Queued", "FineTuneRun queued: stage merge waits for admission"),
    ]


def test_a_spec_edit_marks_finished_stages_whose_inputs_changed_as_outdated() -> None:
    done, _ = Scenario(5).status()
    edited = Scenario(3, spec=FineTuneRunSpec.model_validate({"export": {"types": ["f16"]}}))
    status, transitions = edited.status(done)
    assert status["stages"]["convert"]["inputKey"] != done["stages"]["convert"]["inputKey"]
    assert ("Normal", "StageOutdated", "evaluate: inputs changed; it will run again") in transitions
    assert status["stages"]["merge"] == done["stages"]["merge"]


def test_a_disabled_gate_is_skipped() -> None:
    status, _ = Scenario(4, spec=FineTuneRunSpec.model_validate({"evaluate": {"enabled": False}})).status()
    assert status["stages"]["evaluate"] == {"phase": "Skipped", "attempts": 0, "outputs": [],
                                            "message": "evaluate.enabled is false"}


def test_failing_a_plan_marks_the_stage_failed_with_the_reason() -> None:
    scenario = Scenario(1)
    failed = failed_plan(scenario.plan, "train", "multi-node training is not supported yet")
    assert isinstance(failed, Plan) and failed.stages["train"].phase == "Failed"
    scenario.plan = failed
    status, _ = scenario.status()
    assert status["phase"] == "Failed"
    assert status["stages"]["train"]["message"] == "multi-node training is not supported yet"


@pytest.mark.parametrize(("old", "new", "patch"), [
    ({"a": 1}, {"a": 1}, {}),
    ({"a": 1}, {"a": 2}, {"a": 2}),
    ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
    ({"s": {"x": 1, "y": 2}}, {"s": {"x": 1, "y": 3, "z": 4}}, {"s": {"y": 3, "z": 4}}),
    ({"s": {"x": 1, "gone": 2}}, {"s": {"x": 1}}, {"s": {"gone": None}}),
    ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),  # lists are replaced whole
    ({}, {"s": {"x": 1}}, {"s": {"x": 1}}),
])
def test_status_writes_carry_only_what_changed_as_a_merge_patch(old: Obj, new: Obj, patch: Obj) -> None:
    assert merge_patch(old, new) == patch
