"""The publish stage in the graph: off unless `spec.publish` asks for something, after the evaluate gate, keyed by
the publish fields (not the credentials) and the upstream outputs; its Job gets the registry login by Secret
reference only."""

from __future__ import annotations

import io
from typing import Any

import pytest

from kubetune.api.types import STAGES
from kubetune.api.validate import InvalidManifest, parse_run, validate_spec
from kubetune.operator.jobspec import build
from kubetune.operator.settings import OperatorSettings
from kubetune.planner import CreateJob, Done, Lookup, Observed, Output, plan
from kubetune.progress_view import ProgressView
from kubetune.stages import enabled_stages, stage_ref
from tests.fixtures.sources import example_sources

DIGESTS = {"dataset": "d1", "train": "t1", "merge": "m1", "convert": "c1", "evaluate": "e1"}
OCI = {"repository": "registry.example.com/team/model", "tag": "v1"}


def publish_key(publish: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                digests: dict[str, str] | None = None) -> str:
    spec = validate_spec({"publish": publish or {"oci": OCI}, **(extra or {})})
    return stage_ref("ns", "run", spec, "publish", digests or DIGESTS, example_sources()).key


def test_publishing_is_off_by_default_and_each_block_turns_it_on() -> None:
    assert "publish" not in enabled_stages(validate_spec({}))
    blocks: list[dict[str, Any]] = [{"oci": OCI}, {"ollama": {}}, {"huggingFace": {}}]
    for block in blocks:
        assert enabled_stages(validate_spec({"publish": block}))[-1] == "publish"


def test_publish_reads_convert_and_evaluate_or_convert_alone_when_the_gate_is_off() -> None:
    spec = validate_spec({"publish": {"ollama": {}}, "evaluate": {"enabled": False}})
    without_gate = {k: v for k, v in DIGESTS.items() if k != "evaluate"}
    assert stage_ref("ns", "run", spec, "publish", without_gate, example_sources()).key
    with pytest.raises(ValueError, match="needs the outputs of evaluate"):
        stage_ref("ns", "run", validate_spec({"publish": {"ollama": {}}}), "publish", without_gate, example_sources())


@pytest.mark.parametrize("edit", [
    {"oci": {**OCI, "tag": "v2"}},
    {"oci": {**OCI, "repository": "registry.example.com/team/other"}},
    {"oci": OCI, "ollama": {}},
    {"oci": OCI, "huggingFace": {"license": "apache-2.0"}},
])
def test_a_changed_publish_field_changes_the_publish_key(edit: dict[str, Any]) -> None:
    assert publish_key(edit) != publish_key()


def test_changed_stop_sequences_or_upstream_outputs_change_the_publish_key() -> None:
    assert publish_key(extra={"training": {"stopSequences": ["<|im_end|>"]}}) != publish_key()
    assert publish_key(digests={**DIGESTS, "convert": "c2"}) != publish_key()
    assert publish_key(digests={**DIGESTS, "evaluate": "e2"}) != publish_key()


def test_who_pushes_is_not_part_of_what_is_published() -> None:
    assert publish_key({"oci": {**OCI, "credentialsSecret": "robot"}}) == publish_key()


def test_publish_fields_change_no_other_stage_key() -> None:
    before = validate_spec({})
    after = validate_spec({"publish": {"oci": OCI, "ollama": {}, "huggingFace": {}}})
    for stage in STAGES[:-1]:
        assert stage_ref("ns", "run", before, stage, DIGESTS, example_sources()) == stage_ref(
            "ns", "run", after, stage, DIGESTS, example_sources())


def settle(spec: dict[str, Any], outputs: dict[str, Output]) -> Any:
    looked: set[str] = set()
    while isinstance(action := plan("ns", "run", validate_spec(spec), Observed(
            outputs, frozenset(looked), (), example_sources())).action, Lookup):
        looked.add(action.ref.key)
    return action


def test_the_planner_runs_publish_last_and_skips_it_once_its_output_exists() -> None:
    spec = {"publish": {"oci": OCI}}
    outputs: dict[str, Output] = {}
    created = []
    while isinstance(action := settle(spec, outputs), CreateJob):
        created.append(action.stage)
        outputs[action.ref.key] = Output(action.ref.key, f"digest-{action.stage}")
    assert isinstance(action, Done) and created == list(STAGES)
    assert isinstance(settle(spec, outputs), Done)  # unchanged: nothing runs again
    retagged = settle({"publish": {"oci": {**OCI, "tag": "v2"}}}, outputs)
    assert isinstance(retagged, CreateJob) and retagged.stage == "publish"  # a new tag publishes again, alone


@pytest.mark.parametrize(("field", "value"), [
    ("repository", "model"),  # no registry host
    ("repository", "registry.example.com/Team/model"),  # repository paths are lowercase
    ("repository", "https://registry.example.com/team/model"),
    ("tag", "-leading-dash"),
    ("tag", "a" * 129),
    ("credentialsSecret", "Not_A_Name"),
])
def test_a_malformed_oci_destination_is_refused_by_validation(field: str, value: str) -> None:
    with pytest.raises(InvalidManifest, match=field):
        validate_spec({"publish": {"oci": {**OCI, field: value}}})


def test_stop_is_not_an_ollama_parameter_the_stop_sequences_are_the_runs() -> None:
    with pytest.raises(InvalidManifest, match="stopSequences"):
        validate_spec({"publish": {"ollama": {"parameters": {"stop": "x"}}}})
    assert validate_spec({"publish": {"ollama": {"parameters": {"temperature": "0.2"}}}})


def test_the_publish_job_gets_the_registry_login_by_secret_reference_only() -> None:
    run = parse_run({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "demo"},
                     "spec": {"storage": {"uri": "s3://bucket/runs"},
                              "publish": {"oci": {**OCI, "credentialsSecret": "robot"}}}})
    spec = run.spec
    ref = stage_ref("default", "demo", spec, "publish", DIGESTS, example_sources())
    upstream = {s: stage_ref("default", "demo", spec, s, DIGESTS, example_sources()) for s in STAGES[:-1]}
    action = CreateJob("publish", ref, 1, "demo-publish-0123abcd")
    objects = build(run, action, OperatorSettings(), upstream, example_sources())
    job = objects[-1]
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_REGISTRY_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "robot", "key": "username", "optional": True}
    assert env["KUBETUNE_REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert env["KUBETUNE_REGISTRY_DOCKERCONFIG"]["valueFrom"]["secretKeyRef"]["key"] == ".dockerconfigjson"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-3:] == [
        "publish", "--run", "/etc/kubetune/run.json"]


def test_a_finished_run_summary_lists_only_the_stages_its_spec_runs() -> None:
    outputs: dict[str, Output] = {}
    while isinstance(action := settle({}, outputs), CreateJob):
        outputs[action.ref.key] = Output(action.ref.key, f"digest-{action.stage}")
    step = plan("ns", "run", validate_spec({}), Observed(outputs, frozenset(outputs), (), example_sources()))
    out = io.StringIO()
    ProgressView("run", out).final(step, {})
    assert [line.split()[0] for line in out.getvalue().splitlines()[2:]] == list(STAGES[:-1])
