"""The Job builder: a run's stage → its ConfigMap (run.json) and batch/v1 Job, schema-valid and deterministic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kubetune.api.types import STAGES
from kubetune.api.validate import FineTuneRun, load_runs, parse_run
from kubetune.operator.jobspec import JobSpecError, build
from kubetune.operator.settings import OperatorSettings
from kubetune.planner import CreateJob, job_name
from kubetune.runconfig import RunConfig
from kubetune.stages import StageRef

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
K8S_VERSIONS = ("1.31", kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version()))  # podFailurePolicy is GA from 1.31
UID = "6f1e2a34-5b6c-4d7e-8f90-a1b2c3d4e5f6"
SETTINGS = OperatorSettings(store_uri="s3://artifacts/runs", store_endpoint="http://minio:9000", store_path_style=True,
                            credentials_secret="kubetune-s3")
Obj = dict[str, Any]


def make_run(spec: Obj | None = None, name: str = "demo", namespace: str = "team") -> FineTuneRun:
    run = parse_run({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                     "metadata": {"name": name, "namespace": namespace}, "spec": spec or {}})
    return dataclasses.replace(run, uid=UID)


def ref(stage: str, char: str = "a") -> StageRef:
    return StageRef(char * 64, f"team/demo/{stage}/{char * 16}")


def upstream() -> dict[str, StageRef]:
    return {stage: ref(stage, "0123456789"[i]) for i, stage in enumerate(STAGES)}


def action(run: FineTuneRun, stage: str, attempt: int = 1) -> CreateJob:
    stage_ref = ref(stage, "f")
    return CreateJob(stage, stage_ref, attempt, job_name(run.name, stage, stage_ref.key, attempt))


def manifests(spec: Obj | None = None, stage: str = "train", settings: OperatorSettings = SETTINGS,
              attempt: int = 1) -> tuple[Obj, Obj]:
    run = make_run(spec)
    config_map, job = build(run, action(run, stage, attempt), settings, upstream())
    return config_map, job


def container(job: Obj) -> Obj:
    [only] = job["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(job: Obj) -> dict[str, Any]:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container(job)["env"]}


# --- schema validity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_builds_manifests_that_validate_strictly(stage: str, version: str) -> None:
    for manifest in manifests(stage=stage):
        assert kubernetes_validate.validate(manifest, version, strict=True) == version


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_every_example_builds_valid_manifests_for_every_stage(example: Path) -> None:
    run = dataclasses.replace(load_runs(example, relative_paths=True)[0], uid=UID)  # ./ paths of local-only examples
    for stage in STAGES:
        for manifest in build(run, action(run, stage), SETTINGS, upstream()):
            assert kubernetes_validate.validate(manifest, K8S_VERSIONS[-1], strict=True)


# --- identity: names, owner, labels ----------------------------------------------------------------------------


def test_the_same_inputs_build_the_same_manifests() -> None:
    assert manifests() == manifests()


def test_names_come_from_the_planner_and_both_objects_are_owned_by_the_run() -> None:
    config_map, job = manifests(attempt=2)
    assert job["metadata"]["name"] == f"demo-train-{'f' * 8}-2"
    assert config_map["metadata"]["name"] == f"demo-train-{'f' * 8}-2-run"
    for obj in (config_map, job):
        assert obj["metadata"]["namespace"] == "team"
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "name": "demo", "uid": UID,
            "controller": True, "blockOwnerDeletion": True}]


def test_labels_name_the_run_stage_key_and_attempt_on_job_pod_and_config_map() -> None:
    config_map, job = manifests(attempt=3)
    expected = {
        "kubetune.dev/run": "demo", "kubetune.dev/stage": "train", "kubetune.dev/key": "f" * 16,
        "kubetune.dev/attempt": "3", "app.kubernetes.io/name": "kubetune", "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "train", "app.kubernetes.io/managed-by": "kubetune-operator",
        "app.kubernetes.io/part-of": "kubetune",
    }
    for obj_labels in (config_map["metadata"]["labels"], job["metadata"]["labels"],
                       job["spec"]["template"]["metadata"]["labels"]):
        assert obj_labels == expected
    assert job["metadata"]["annotations"] == {"kubetune.dev/input-key": "f" * 64,
                                              "kubetune.dev/prefix": "team/demo/train/" + "f" * 16}


# --- the run config --------------------------------------------------------------------------------------------


def test_the_config_map_holds_the_resolved_run_config_with_this_stage_and_those_before_it() -> None:
    config_map, _ = manifests(stage="merge")
    config = RunConfig.from_json(json.loads(config_map["data"]["run.json"]))
    assert (config.name, config.namespace, config.uid) == ("demo", "team", UID)
    assert sorted(config.stages) == ["dataset", "merge", "train"]
    assert config.stages["merge"] == ref("merge", "f")
    assert config.stages["train"] == upstream()["train"]
    assert (config.store.uri, config.store.endpoint, config.store.path_style) == (
        "s3://artifacts/runs", "http://minio:9000", True)


def test_no_secret_value_reaches_the_config_map_only_references_do() -> None:
    spec = {"baseModel": {"uri": "hf://org/model", "tokenSecret": {"name": "hf", "key": "token"}},
            "storage": {"uri": "s3://bucket/p", "credentialsSecret": "my-s3"}}
    config_map, job = manifests(spec)
    run_json = config_map["data"]["run.json"]
    assert "AWS_" not in run_json and "HF_TOKEN" not in run_json
    variables = env(job)
    assert variables["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "my-s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert variables["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "my-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert variables["AWS_SESSION_TOKEN"] == {
        "secretKeyRef": {"name": "my-s3", "key": "AWS_SESSION_TOKEN", "optional": True}}
    assert variables["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert "HF_HUB_OFFLINE" not in variables  # an hf:// model needs the hub


@pytest.mark.parametrize(("storage", "settings_secret", "expected"), [
    ({}, "kubetune-s3", "kubetune-s3"),  # the operator's default store and Secret
    ({"uri": "s3://own/bucket", "credentialsSecret": "own"}, "kubetune-s3", "own"),
    ({"uri": "s3://own/bucket"}, "kubetune-s3", "kubetune-s3"),
    ({"uri": "/mnt/shared/store"}, "kubetune-s3", None),  # a local folder needs no credentials
])
def test_store_credentials_come_from_the_runs_secret_or_the_operator_default(
    storage: Obj, settings_secret: str, expected: str | None
) -> None:
    settings = dataclasses.replace(SETTINGS, credentials_secret=settings_secret)
    _, job = manifests({"storage": storage}, settings=settings)
    refs = {v["valueFrom"]["secretKeyRef"]["name"] for v in container(job)["env"]
            if v["name"].startswith("AWS_")}
    assert refs == ({expected} if expected else set())
    assert env(job)["HF_HUB_OFFLINE"] == "1"


def test_a_run_without_a_store_and_an_operator_without_a_default_cannot_build() -> None:
    with pytest.raises(ValueError, match="spec.storage.uri is not set"):
        manifests(settings=OperatorSettings())


# --- the container ---------------------------------------------------------------------------------------------


def test_the_container_runs_the_stage_entrypoint_on_the_mounted_run_config() -> None:
    _, job = manifests(stage="convert")
    main = container(job)
    assert main["name"] == "convert"
    assert main["image"] == SETTINGS.job_image
    assert main["command"] == ["python", "-m", "kubetune.jobs", "convert", "--run", "/etc/kubetune/run.json"]
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/etc/kubetune"]["readOnly"] is True
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/kubetune"]["name"]]["configMap"] == {
        "name": f"demo-convert-{'f' * 8}-run", "items": [{"key": "run.json", "path": "run.json"}]}
    assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_image_comes_from_the_stage_resources_before_the_operator_default() -> None:
    _, job = manifests({"resources": {"train": {"image": "registry.local/kt-job:cuda"}}})
    assert container(job)["image"] == "registry.local/kt-job:cuda"
    _, other = manifests({"resources": {"train": {"image": "registry.local/kt-job:cuda"}}}, stage="merge")
    assert container(other)["image"] == SETTINGS.job_image


def test_the_pod_runs_under_the_restricted_pod_security_standard() -> None:
    _, job = manifests()
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container(job)["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["serviceAccountName"] == "kubetune-job"
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"


def test_a_read_only_root_gets_writable_scratch_with_every_cache_pointed_at_it() -> None:
    _, job = manifests(stage="dataset")
    mounts = {m["mountPath"]: m["name"] for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/scratch"]]["emptyDir"] == {"sizeLimit": "10Gi"}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {}
    assert {k: env(job)[k] for k in ("KUBETUNE_WORKDIR", "HOME", "TMPDIR", "HF_HOME", "XDG_CACHE_HOME")} == {
        "KUBETUNE_WORKDIR": "/scratch/work", "HOME": "/scratch", "TMPDIR": "/tmp",
        "HF_HOME": "/scratch/.cache/huggingface", "XDG_CACHE_HOME": "/scratch/.cache"}
    assert "/dev/shm" not in mounts  # only training needs a large /dev/shm unless asked


@pytest.mark.parametrize(("stage", "resources", "size"), [
    ("train", {}, "8Gi"),
    ("train", {"train": {"shmSize": "16Gi"}}, "16Gi"),
    ("merge", {"merge": {"shmSize": "2Gi"}}, "2Gi"),
])
def test_a_memory_backed_dev_shm_is_mounted_for_training_and_where_asked(stage: str, resources: Obj,
                                                                          size: str) -> None:
    _, job = manifests({"resources": resources}, stage=stage)
    mounts = {m["mountPath"]: m["name"] for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": size}


@pytest.mark.parametrize(("stage", "resources", "size"), [
    ("dataset", {}, "10Gi"),
    ("train", {}, "100Gi"),
    ("convert", {}, "150Gi"),
    ("evaluate", {}, "50Gi"),
    ("train", {"train": {"scratchSize": "400Gi"}}, "400Gi"),
    ("merge", {"defaults": {"scratchSize": "20Gi"}}, "20Gi"),
    ("merge", {"defaults": {"scratchSize": "20Gi"}, "merge": {"scratchSize": "300G"}}, "300G"),
])
def test_scratch_has_the_size_limit_the_spec_or_the_stage_default_gives(stage: str, resources: Obj,
                                                                       size: str) -> None:
    _, job = manifests({"resources": resources}, stage=stage)
    mounts = {m["mountPath"]: m["name"] for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/scratch"]]["emptyDir"] == {"sizeLimit": size}


@pytest.mark.parametrize(("stage", "grace"), [("train", 300), ("dataset", 60), ("convert", 60)])
def test_the_grace_period_leaves_time_to_save_a_checkpoint(stage: str, grace: int) -> None:
    _, job = manifests(stage=stage)
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace


# --- resources and scheduling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "stage", "settings", "gpus"), [
    ({}, "train", SETTINGS, "1"),  # a cluster default: one GPU for training
    ({"resources": {"train": {"gpus": 0}}}, "train", SETTINGS, None),
    ({"training": {"device": "cpu"}}, "train", SETTINGS, None),
    ({"resources": {"train": {"gpus": 4}}}, "train", SETTINGS, "4"),
    ({}, "train", dataclasses.replace(SETTINGS, train_gpus=0), None),
    ({}, "evaluate", SETTINGS, None),
    ({"resources": {"evaluate": {"gpus": 1}}}, "evaluate", SETTINGS, "1"),
    ({"resources": {"defaults": {"gpus": 2}}}, "convert", SETTINGS, "2"),
])
def test_gpus_are_requested_for_training_by_default_and_for_other_stages_when_asked(
    spec: Obj, stage: str, settings: OperatorSettings, gpus: str | None
) -> None:
    _, job = manifests(spec, stage=stage, settings=settings)
    assert container(job)["resources"].get("limits", {}).get("nvidia.com/gpu") == gpus


def test_cpu_and_memory_are_requested_with_the_memory_limit_equal_to_the_request() -> None:
    _, job = manifests({"resources": {"defaults": {"cpu": "2", "memory": "8Gi"}, "train": {"memory": "64Gi"}}})
    assert container(job)["resources"] == {"requests": {"cpu": "2", "memory": "64Gi"},
                                           "limits": {"memory": "64Gi", "nvidia.com/gpu": "1"}}


def test_scheduling_merges_operator_defaults_run_defaults_and_the_stage_block() -> None:
    settings = dataclasses.replace(SETTINGS, node_selector={"pool": "batch", "zone": "a"},
                                   priority_class_name="kubetune-default")
    spec = {"resources": {
        "defaults": {"nodeSelector": {"zone": "b"}, "tolerations": [{"key": "batch", "operator": "Exists"}]},
        "train": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  "priorityClassName": "training"},
    }}
    _, train = manifests(spec, settings=settings)
    pod = train["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "batch", "zone": "b"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"
    _, merge = manifests(spec, stage="merge", settings=settings)
    merge_pod = merge["spec"]["template"]["spec"]
    assert merge_pod["tolerations"] == [{"key": "batch", "operator": "Exists"}]
    assert merge_pod["priorityClassName"] == "kubetune-default"


@pytest.mark.parametrize(("spec", "settings", "queue"), [
    ({}, SETTINGS, None),
    ({"resources": {"train": {"queueName": "gpu-queue"}}}, SETTINGS, "gpu-queue"),
    ({}, dataclasses.replace(SETTINGS, queue_name="team-queue"), "team-queue"),
])
def test_a_kueue_queue_labels_the_job_and_creates_it_suspended(spec: Obj, settings: OperatorSettings,
                                                               queue: str | None) -> None:
    _, job = manifests(spec, settings=settings)
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue
    assert job["spec"]["suspend"] is (queue is not None)
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]


# --- failure handling ------------------------------------------------------------------------------------------


def test_config_errors_fail_the_job_and_disruptions_are_retried_without_counting() -> None:
    _, job = manifests()
    assert job["spec"]["podFailurePolicy"] == {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "train", "operator": "In", "values": [2]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}
    assert job["spec"]["backoffLimit"] == SETTINGS.backoff_limit
    assert job["spec"]["ttlSecondsAfterFinished"] == SETTINGS.ttl_seconds_after_finished
    assert "activeDeadlineSeconds" not in job["spec"]


def test_the_run_sets_backoff_limit_and_deadline_per_stage() -> None:
    _, job = manifests({"resources": {"train": {"backoffLimit": 5, "activeDeadlineSeconds": 86400}}})
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (5, 86400)


def test_an_unknown_stage_cannot_build() -> None:
    run = make_run()
    with pytest.raises(JobSpecError, match="unknown stage"):
        build(run, CreateJob("finetune", ref("train"), 1, "demo-finetune-ffffffff"), SETTINGS, upstream())


# --- training ranks: several GPUs, several nodes ---------------------------------------------------------------

MULTI_NODE = {"resources": {"train": {"nodes": 3, "gpus": 4}}}


def multi_node(spec: Obj = MULTI_NODE, attempt: int = 1) -> tuple[Obj, Obj, Obj]:
    run = make_run(spec)
    config_map, service, job = build(run, action(run, "train", attempt), SETTINGS, upstream())
    return config_map, service, job


@pytest.mark.parametrize(("spec", "nproc"), [
    ({}, "1"),  # the operator's default: one GPU, one rank
    ({"resources": {"train": {"gpus": 4}}}, "4"),
    ({"resources": {"defaults": {"gpus": 2}}}, "2"),
    ({"training": {"device": "cpu"}}, "1"),  # no GPU: still one rank
])
def test_a_train_pod_runs_one_rank_per_gpu(spec: Obj, nproc: str) -> None:
    _, job = manifests(spec)
    assert env(job)["NPROC_PER_NODE"] == nproc
    assert "MASTER_ADDR" not in env(job) and "completionMode" not in job["spec"]


def test_other_stages_get_no_rank_variables() -> None:
    _, job = manifests({"resources": {"defaults": {"gpus": 2}}}, stage="merge")
    assert not {"NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR"} & set(env(job))


def test_one_node_with_several_gpus_is_a_plain_job_without_a_service() -> None:
    run = make_run({"resources": {"train": {"gpus": 8, "nodes": 1}}})
    objs = build(run, action(run, "train"), SETTINGS, upstream())
    assert [obj["kind"] for obj in objs] == ["ConfigMap", "Job"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_multi_node_training_builds_a_schema_valid_config_map_service_and_indexed_job(version: str) -> None:
    objs = multi_node()
    assert [obj["kind"] for obj in objs] == ["ConfigMap", "Service", "Job"]  # the order they are created in
    for manifest in objs:
        assert kubernetes_validate.validate(manifest, version, strict=True) == version


def test_the_indexed_job_runs_one_pod_per_node_named_under_the_services_subdomain() -> None:
    _, service, job = multi_node()
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"] == f"demo-train-{'f' * 8}"
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_the_rendezvous_service_is_headless_owned_by_the_run_and_selects_the_stages_pods() -> None:
    _, service, job = multi_node()
    assert service["metadata"]["namespace"] == "team"
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert service["metadata"]["ownerReferences"][0]["uid"] == UID
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True  # pod 0 is reachable while it is still starting
    assert spec["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"] == {"kubetune.dev/run": "demo", "kubetune.dev/stage": "train",
                                "kubetune.dev/key": "f" * 16}
    assert spec["selector"].items() <= pod_labels.items()


def test_every_pod_gets_the_rendezvous_variables_with_its_completion_index_as_node_rank() -> None:
    _, service, job = multi_node()
    variables = env(job)
    assert {k: variables[k] for k in ("NPROC_PER_NODE", "NNODES", "MASTER_ADDR", "MASTER_PORT")} == {
        "NPROC_PER_NODE": "4", "NNODES": "3", "MASTER_PORT": "29500",
        "MASTER_ADDR": f"{job['metadata']['name']}-0.{service['metadata']['name']}"}
    assert variables["NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert "WORLD_SIZE" not in variables and "RANK" not in variables  # set per rank by the launcher, not per pod


def test_a_retry_meets_at_its_own_pod_0_through_the_same_service() -> None:
    _, first_service, first = multi_node(attempt=1)
    _, second_service, second = multi_node(attempt=2)
    assert first_service == second_service  # created once; the retry's create finds it
    assert "kubetune.dev/attempt" not in second_service["metadata"]["labels"]
    assert env(first)["MASTER_ADDR"] == f"demo-train-{'f' * 8}-0.demo-train-{'f' * 8}"
    assert env(second)["MASTER_ADDR"] == f"demo-train-{'f' * 8}-2-0.demo-train-{'f' * 8}"


def test_the_pod_retry_budget_counts_incidents_not_pods() -> None:
    _, _, job = multi_node({"resources": {"train": {"nodes": 3, "backoffLimit": 2}}})
    assert job["spec"]["backoffLimit"] == 6


def test_the_longest_run_name_still_gives_valid_pod_hostnames_for_every_index() -> None:
    name = "r" * 40  # RUN_NAME_MAX
    run = make_run({"resources": {"train": {"nodes": 256}}}, name=name)
    _, service, job = build(run, action(run, "train", attempt=3), SETTINGS, upstream())
    hostname = f"{job['metadata']['name']}-255"
    assert len(hostname) <= 63 and len(service["metadata"]["name"]) <= 63
    assert kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("stage", ["dataset", "merge", "convert", "evaluate", "defaults"])
def test_only_the_train_stage_may_span_nodes(stage: str) -> None:
    with pytest.raises(ValueError, match="nodes > 1 applies only to the train stage"):
        make_run({"resources": {stage: {"nodes": 2}}})
