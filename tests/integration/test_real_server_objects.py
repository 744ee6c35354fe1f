"""Everything we ship or create is accepted by the API server, as the emulator's admission mirrors it
(tests/kube/admission.py: defaulting, validation, immutable fields; tests/kube/pod_security.py: Pod Security
Admission): the CRD and every object of the Helm chart (for every value set), and the ConfigMaps, Services and
Jobs the operator builds for every example, the sources step and every stage, and multi-node training, in
namespaces that enforce the "restricted" Pod Security Standard. Then the updates the operator makes (suspend,
resume) are accepted and the changes the server forbids are refused."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import pytest
import yaml

from kubetune.api.types import RUN_NAME_MAX, STAGES
from kubetune.api.validate import FineTuneRun, InvalidManifest, load_runs, parse_run
from kubetune.operator import labels
from kubetune.operator import reconcile as reconcile_module
from kubetune.operator.jobspec import build
from kubetune.operator.kube import KubeApi
from kubetune.operator.metrics import Metrics
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings
from kubetune.planner import CreateJob, job_name
from kubetune.sources import SOURCES
from kubetune.stages import StageRef
from tests.kube.emulator import KubeEmulator
from tests.kube.errors import ApiError
from tests.kube.executor import JobExecutor
from tests.reliability.bed import INSTANT_COMMAND
from tests.reliability.bed import run_manifest as bed_run_manifest
from tests.reliability.bed import terminal as bed_terminal
from tests.unit.test_chart_render import VALUE_SETS  # every value set the chart's own tests render

RUN_STAGES = tuple(s for s in STAGES if s != "publish")  # the runs here publish nothing (spec.publish is empty)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
CRD_FILE = ROOT / "crds" / "kubetune.dev_finetuneruns.yaml"
# local-messages.yaml reads its data file by a path relative to itself, which only `kubetune run` understands.
LOCAL_ONLY = {"local-messages.yaml"}
EXAMPLES = sorted(path for path in (ROOT / "examples").glob("*.yaml") if path.name not in LOCAL_ONLY)
RELEASE, RELEASE_NAMESPACE = "kubetune", "kubetune-system"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}
Obj = dict[str, Any]


def restricted_namespace(kube: KubeEmulator, name: str) -> None:
    if kube.find("namespaces", name, None) is None:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}})
    else:
        kube.patch("namespaces", name, {"metadata": {"labels": RESTRICTED}}, None)


def render_chart(value_set: str) -> tuple[list[Obj], list[Obj]]:
    """(the chart's CRDs, its templated objects)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(VALUE_SETS[value_set], name=RELEASE, namespace=RELEASE_NAMESPACE)
        crds = [yaml.safe_load(crd["data"]) for crd in chart.crds]
    objects = [doc for path, text in sorted(manifests.items()) if not path.endswith("NOTES.txt")
               for doc in yaml.safe_load_all(text) if doc]
    return crds, objects


def service_monitor_crd() -> Obj:
    """The Prometheus Operator installs ServiceMonitor; this stand-in only serves the kind (its fields are the
    Prometheus Operator's to check: tests/unit/test_chart_render.py checks ours against its schema)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }}}],
        },
    }


def chart_settings() -> OperatorSettings:
    """The operator's settings as the all-on chart configures them (queue, node selector, tolerations, priority
    class, GPUs, credentials Secret): the Jobs it builds then carry every optional field."""
    _, objects = render_chart("all-on")
    [deployment] = [obj for obj in objects if obj["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return OperatorSettings.from_env({var["name"]: var["value"] for var in container["env"] if "value" in var})


SETTINGS = {
    "plain": OperatorSettings(store_uri="s3://artifacts/runs", store_endpoint="http://minio:9000",
                              store_path_style=True, credentials_secret="kubetune-s3"),
    "chart-all-on": chart_settings(),
}


@pytest.fixture
def cluster(kube: KubeEmulator) -> Iterator[KubeEmulator]:
    """The emulator with the CRD installed as `kubectl apply -f crds/` would."""
    for crd in yaml.safe_load_all(CRD_FILE.read_text()):
        kube.create(crd)
    yield kube


def create_run(kube: KubeEmulator, run_manifest: Obj) -> FineTuneRun:
    """Create the run (so the objects it owns are not collected at once) in a restricted namespace."""
    namespace = run_manifest["metadata"].get("namespace") or "default"
    restricted_namespace(kube, namespace)
    created = kube.create({**run_manifest, "metadata": {**run_manifest["metadata"], "namespace": namespace}})
    return dataclasses.replace(parse_run(created), uid=created["metadata"]["uid"])


def action(run: FineTuneRun, stage: str, attempt: int = 1) -> CreateJob:
    ref = StageRef("f" * 64, f"{run.namespace}/{run.name}/{stage}/{'f' * 16}")
    return CreateJob(stage, ref, attempt, job_name(run.name, stage, ref.key, attempt))


def upstream(run: FineTuneRun) -> dict[str, StageRef]:
    return {stage: StageRef(str(i) * 64, f"{run.namespace}/{run.name}/{stage}/{str(i) * 16}")
            for i, stage in enumerate(STAGES)}


def create_all(kube: KubeEmulator, objects: list[Obj]) -> list[Obj]:
    return [kube.create(obj) for obj in objects]


def run_manifest(name: str, spec: Obj, namespace: str = "team") -> Obj:
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


# --- the chart --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_chart_object_is_accepted_in_restricted_namespaces(kube: KubeEmulator, value_set: str) -> None:
    crds, objects = render_chart(value_set)
    for crd in crds:
        assert kube.create(crd)["status"]["conditions"][1]["type"] == "Established"
    if any(obj["kind"] == "ServiceMonitor" for obj in objects):
        kube.create(service_monitor_crd())
    for namespace in {obj["metadata"].get("namespace") for obj in objects} - {None}:
        restricted_namespace(kube, namespace)
    created = create_all(kube, objects)
    assert [(obj["kind"], obj["metadata"]["name"]) for obj in created] == [
        (obj["kind"], obj["metadata"]["name"]) for obj in objects]
    [deployment] = [obj for obj in created if obj["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert (pod["restartPolicy"], pod["dnsPolicy"], pod["schedulerName"]) == (
        "Always", "ClusterFirst", "default-scheduler")  # the server's defaults were applied


def test_the_chart_deployment_would_be_refused_without_its_restricted_security_contexts(kube: KubeEmulator) -> None:
    _, objects = render_chart("defaults")
    [deployment] = [obj for obj in objects if obj["kind"] == "Deployment"]
    restricted_namespace(kube, RELEASE_NAMESPACE)
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        container.pop("securityContext", None)
    with pytest.raises(ApiError) as refused:
        kube.create(deployment)
    assert refused.value.code == 403
    assert refused.value.message.startswith(f'pods "{deployment["metadata"]["name"]}-" is forbidden: violates '
                                            f'PodSecurity "restricted:latest": allowPrivilegeEscalation != false')
    assert kube.find("deployments", deployment["metadata"]["name"], RELEASE_NAMESPACE) is None


# --- the operator's objects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOCAL_ONLY))
def test_a_local_only_example_is_refused_by_the_server_for_its_relative_path(cluster: KubeEmulator, name: str) -> None:
    [manifest] = yaml.safe_load_all((ROOT / "examples" / name).read_text())
    with pytest.raises(ApiError) as refused:
        create_run(cluster, manifest)
    assert refused.value.code == 422 and "spec.dataset.uri" in refused.value.message


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_every_example_gets_objects_the_server_accepts_for_every_stage(cluster: KubeEmulator, example: Path,
                                                                       settings: str) -> None:
    [manifest] = yaml.safe_load_all(example.read_text())
    run = create_run(cluster, manifest)
    assert load_runs(example)[0].spec == run.spec  # the server's defaults agree with ours
    for stage in (SOURCES, *STAGES):  # the step that resolves what the stages read, then every stage
        built = build(run, action(run, stage), SETTINGS[settings], upstream(run))
        created = create_all(cluster, built)
        job = created[-1]
        assert job["kind"] == "Job" and job["metadata"]["generation"] == 1
        assert job["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}}
        assert job["spec"]["podReplacementPolicy"] == "Failed"  # defaulted: the Job has a podFailurePolicy


@pytest.mark.parametrize("settings", SETTINGS)
def test_multi_node_training_objects_are_accepted_with_the_longest_run_name(cluster: KubeEmulator,
                                                                            settings: str) -> None:
    name = "m" * RUN_NAME_MAX
    run = create_run(cluster, run_manifest(name, {"resources": {"train": {"nodes": 8, "gpus": 8}}}))
    built = build(run, action(run, "train", attempt=12), SETTINGS[settings], upstream(run))
    config_map, service, job = create_all(cluster, built)
    assert (config_map["kind"], service["kind"], job["kind"]) == ("ConfigMap", "Service", "Job")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["ports"][0]["protocol"] == "TCP"
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == (
        "Indexed", 8, 8)


def test_the_operators_client_creates_suspends_resumes_and_reports_through_the_server(cluster: KubeEmulator) -> None:
    """Over HTTP, with the operator's own client: the stage's objects, the suspend and resume merge patches the
    reconciler sends, and an Event about the run (its message cut to the operator's limit)."""
    run = create_run(cluster, run_manifest("demo", {}))
    built = build(run, action(run, "train"), SETTINGS["plain"], upstream(run))
    name, namespace = built[-1]["metadata"]["name"], run.namespace
    api = KubeApi(kubernetes.client.Configuration(host=cluster.url))

    async def scenario() -> tuple[Obj, Obj]:
        for obj in built:
            assert await api.create(obj) is not None
        suspended = await api.patch_job(namespace, name, {"metadata": {"annotations": {labels.SUSPENDED: "true"}},
                                                          "spec": {"suspend": True}})
        resumed = await api.patch_job(namespace, name, {"metadata": {"annotations": {labels.SUSPENDED: None}},
                                                        "spec": {"suspend": False}})
        await api.post_event(cluster.get("finetuneruns", "demo", namespace), "Warning", "StageFailed", "x" * 5000,
                             "2026-01-01T00:00:00Z")
        await api.close()
        return suspended, resumed

    suspended, resumed = asyncio.run(scenario())
    assert suspended["spec"]["suspend"] is True and suspended["metadata"]["generation"] == 2
    assert resumed["spec"]["suspend"] is False and labels.SUSPENDED not in resumed["metadata"]["annotations"]
    [event] = cluster.events(namespace, involved_name="demo")
    assert (event["reason"], event["involvedObject"]["uid"]) == ("StageFailed", run.uid)


@pytest.mark.parametrize(("patch", "field"), [
    ({"spec": {"template": {"spec": {"containers": [{"name": "train", "image": "other:1"}]}}}}, "spec.template"),
    ({"spec": {"template": {"metadata": {"labels": {"extra": "label"}}}}}, "spec.template"),
    ({"spec": {"selector": {"matchLabels": {"kubetune.dev/run": "demo"}}}}, "spec.selector"),
    ({"spec": {"podFailurePolicy": {"rules": [{"action": "Ignore",
                                               "onPodConditions": [{"type": "DisruptionTarget"}]}]}}},
     "spec.podFailurePolicy"),
    ({"spec": {"completions": 2}}, "spec.completions"),
])
def test_the_server_refuses_changes_to_a_started_jobs_immutable_fields(cluster: KubeEmulator, patch: Obj,
                                                                       field: str) -> None:
    run = create_run(cluster, run_manifest("demo", {}))
    *_, job = create_all(cluster, build(run, action(run, "train"), SETTINGS["plain"], upstream(run)))
    name = job["metadata"]["name"]
    with pytest.raises(ApiError) as refused:
        cluster.patch("jobs", name, patch, run.namespace, patch_type="strategic")
    assert (refused.value.code, refused.value.reason) == (422, "Invalid")
    assert refused.value.message.startswith(f'Job.batch "{name}" is invalid: ')
    assert f"{field}: Invalid value: " in refused.value.message and "field is immutable" in refused.value.message
    assert cluster.get("jobs", name, run.namespace)["metadata"]["resourceVersion"] == job["metadata"]["resourceVersion"]


def test_a_queued_job_may_change_its_scheduling_but_not_its_container_before_it_starts(cluster: KubeEmulator) -> None:
    """Kueue admits a suspended Job by setting its node selector and tolerations, then unsuspending it."""
    run = create_run(cluster, run_manifest("demo", {}))
    queued = dataclasses.replace(SETTINGS["plain"], queue_name="gpu-queue")
    *_, job = create_all(cluster, build(run, action(run, "train"), queued, upstream(run)))
    name = job["metadata"]["name"]
    assert job["spec"]["suspend"] is True
    admitted = cluster.patch("jobs", name, {"spec": {"template": {"spec": {
        "nodeSelector": {"cloud.example.com/flavor": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}}},
        run.namespace, patch_type="strategic")
    assert admitted["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.example.com/flavor": "h100"}
    with pytest.raises(ApiError, match="spec.template: Invalid value: .*field is immutable"):
        cluster.patch("jobs", name, {"spec": {"template": {"spec": {"containers": [
            {"name": "train", "image": "other:1"}]}}}}, run.namespace, patch_type="strategic")


def test_a_started_job_may_not_change_its_scheduling(cluster: KubeEmulator) -> None:
    run = create_run(cluster, run_manifest("demo", {}))
    *_, job = create_all(cluster, build(run, action(run, "train"), SETTINGS["plain"], upstream(run)))
    cluster.patch_status("jobs", job["metadata"]["name"], {"startTime": "2026-01-01T00:00:00Z"}, run.namespace)
    cluster.patch("jobs", job["metadata"]["name"], {"spec": {"suspend": True}}, run.namespace)
    with pytest.raises(ApiError, match="spec.template: Invalid value: .*field is immutable"):
        cluster.patch("jobs", job["metadata"]["name"], {"spec": {"template": {"spec": {
            "nodeSelector": {"zone": "b"}}}}}, run.namespace)


@pytest.mark.parametrize("toleration", [
    pytest.param({"operator": "Exists"}, id="every taint"),
    pytest.param({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, id="a key that exists"),
    pytest.param({"key": "spot", "value": "true", "effect": "NoExecute", "tolerationSeconds": 600},
                 id="a NoExecute taint for a while"),
])
def test_a_toleration_the_run_accepts_is_one_the_server_accepts_in_its_jobs(cluster: KubeEmulator,
                                                                           toleration: Obj) -> None:
    spec = {"resources": {"defaults": {"tolerations": [toleration]}}}
    parse_run(run_manifest("demo", spec))
    run = create_run(cluster, run_manifest("demo", spec))
    *_, job = create_all(cluster, build(run, action(run, "train"), SETTINGS["plain"], upstream(run)))
    assert job["spec"]["template"]["spec"]["tolerations"][0]["operator"] == toleration.get("operator", "Equal")


@pytest.mark.parametrize(("toleration", "field"), [
    pytest.param({"key": "k", "operator": "Exists", "value": "v"}, "value", id="a value with Exists"),
    pytest.param({"operator": "Equal", "value": "v"}, "operator", id="no key with Equal"),
    pytest.param({"value": "v"}, "operator", id="no key and the default operator"),
    pytest.param({"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}, "effect",
                 id="tolerationSeconds without NoExecute"),
    pytest.param({"key": "a b", "operator": "Exists"}, "key", id="a key that is no label key"),
    pytest.param({"key": "k", "value": "a b"}, "value", id="a value that is no label value"),
])
def test_a_toleration_the_server_would_refuse_in_a_job_is_refused_by_validate_and_the_crd_at_its_field(
        cluster: KubeEmulator, toleration: Obj, field: str) -> None:
    """Refused up front, by both, at the same path: never later, when the stage's Job is created."""
    spec = {"resources": {"defaults": {"tolerations": [toleration]}}}
    path = f"spec.resources.defaults.tolerations[0].{field}"
    with pytest.raises(InvalidManifest, match=re.escape(path)):
        parse_run(run_manifest("demo", spec))
    with pytest.raises(ApiError, match=re.escape(path)):
        create_run(cluster, run_manifest("demo", spec))
    assert cluster.find("finetuneruns", "demo") is None


def reconcile_until_settled(kube: KubeEmulator, tmp_path: Path, name: str, namespace: str = "team") -> Obj:
    """A reconciler with instant stages, run against the emulator over HTTP until the run succeeds or fails."""
    settings = OperatorSettings(job_image="kubetune-job:test", job_command=INSTANT_COMMAND)
    operator = Reconciler(settings, KubeApi(kubernetes.client.Configuration(host=kube.url)), Metrics())

    async def scenario() -> Obj:
        deadline = time.monotonic() + 180  # generous: on a loaded 2-core machine the instant stages are not instant
        while True:
            await operator.request(namespace, name, fresh=True)
            run = kube.get("finetuneruns", name, namespace)
            if bed_terminal(run) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await operator.kube.close()
        return run

    with JobExecutor(kube, tmp_path / "executor"):
        return asyncio.run(scenario())


def local_store_run(name: str, spec: Obj, tmp_path: Path) -> Obj:
    manifest = bed_run_manifest(name, {"uri": (tmp_path / "store").as_uri()})
    manifest["metadata"]["namespace"] = "team"
    manifest["spec"].update(spec)
    return manifest


def test_a_run_whose_config_would_overflow_a_config_map_fails_with_the_fields_to_shorten_and_creates_nothing(
        cluster: KubeEmulator, tmp_path: Path) -> None:
    spec = {"evaluate": {"prompts": [{"prompt": "a" * 4096} for _ in range(256)]}}  # the schema's maxima
    create_run(cluster, local_store_run("demo", spec, tmp_path))  # the CRD accepts it, as a real server does
    run = reconcile_until_settled(cluster, tmp_path, "demo")
    assert run["status"]["phase"] == "Failed"
    assert re.search(r"over the 1,048,576 a ConfigMap holds: shorten spec\.evaluate\.prompts", run["status"]["message"])
    assert cluster.list("configmaps", "team") == [] and cluster.list("jobs", "team") == []


def test_objects_the_server_refuses_fail_the_run_with_its_message_and_leave_nothing_behind(
        cluster: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 422 is the same answer every time: the run fails at once instead of retrying, and the ConfigMap created
    for the refused Job goes too."""

    def refused_job(*args: Any, **kwargs: Any) -> list[Obj]:
        *prerequisites, job = build(*args, **kwargs)
        job["spec"]["template"]["spec"]["containers"][0]["name"] = "Not_A_DNS_Label"
        return [*prerequisites, job]

    monkeypatch.setattr(reconcile_module, "build", refused_job)
    create_run(cluster, local_store_run("demo", {}, tmp_path))
    run = reconcile_until_settled(cluster, tmp_path, "demo")
    assert run["status"]["phase"] == "Failed"
    assert re.search(r"the API server refused the stage's objects: Job\.batch \"demo-sources-\w+\" is invalid: "
                     r"\[.*spec\.template\.spec\.containers\[0\]\.name: Invalid value: \"Not_A_DNS_Label\"",
                     run["status"]["message"])
    assert cluster.list("configmaps", "team") == [] and cluster.list("jobs", "team") == []


def test_a_run_in_a_restricted_namespace_succeeds_through_the_servers_admission(cluster: KubeEmulator,
                                                                                tmp_path: Path) -> None:
    """The reconciler creates every Job of a run (instant stages) in a namespace that enforces "restricted", and
    the executor's pods for them, through admission: the run succeeds, and no object was refused on the way."""
    create_run(cluster, local_store_run("demo", {}, tmp_path))
    cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kubetune-job",
                                                                               "namespace": "team"}})
    run = reconcile_until_settled(cluster, tmp_path, "demo")
    assert run["status"]["phase"] == "Succeeded", run["status"]
    jobs = cluster.list("jobs", "team")
    assert sorted(job["metadata"]["labels"][labels.STAGE] for job in jobs) == sorted((SOURCES, *RUN_STAGES))
    assert len(cluster.list("pods", "team")) >= len(jobs)  # every Job's pod was admitted
