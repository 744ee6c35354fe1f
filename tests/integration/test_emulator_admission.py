"""The emulator refuses what a real API server refuses, with the server's kind of message, and stores nothing:
object names and labels, ConfigMaps, Services, Jobs (defaults, podFailurePolicy, immutable fields), pod specs,
Deployments, RBAC, and Pod Security Admission in namespaces that enforce a level."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.kube.emulator import KubeEmulator
from tests.kube.errors import ApiError
from tests.kube.http import KubeHttp
from tests.kube.validation import quantity

Obj = dict[str, Any]
Mutation = Callable[[Obj], object]
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
SECURE_CONTAINER = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}}


def container(**fields: Any) -> Obj:
    return {"name": "main", "image": "kubetune/jobs:1", "command": ["true"], **fields}


def job(name: str = "j", *, namespace: str = "default", secure: bool = False, **spec: Any) -> Obj:
    main = container(securityContext=copy.deepcopy(SECURE_CONTAINER)) if secure else container()
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
        "spec": {**spec, "template": {"spec": {"restartPolicy": "Never", "containers": [main],
                                               "volumes": [{"name": "scratch", "emptyDir": {}}]}}},
    }


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def main_container(obj: Obj) -> Obj:
    found: Obj = pod_spec(obj)["containers"][0]
    return found


def refused(kube: KubeEmulator, obj: Obj, code: int = 422) -> str:
    """Create `obj`; it must be refused with `code` and leave nothing stored. Returns the server's message."""
    kind = {"Job": "jobs", "Pod": "pods", "Service": "services", "ConfigMap": "configmaps", "Secret": "secrets",
            "Deployment": "deployments", "Role": "roles", "RoleBinding": "rolebindings",
            "ClusterRoleBinding": "clusterrolebindings", "Event": "events"}[obj["kind"]]
    namespace = obj["metadata"].get("namespace", "default")
    before = kube.list(kind, namespace)
    with pytest.raises(ApiError) as error:
        kube.create(obj)
    assert error.value.code == code, error.value.message
    assert kube.list(kind, namespace) == before  # nothing half-created
    return error.value.message


def restricted(kube: KubeEmulator, name: str = "secure", level: str = "restricted") -> str:
    kube.create({"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": level}}})
    return name


# --- names, labels, annotations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "expected"), [
    pytest.param({"kind": "ConfigMap", "metadata": {"name": "demo\n"}},
                 'metadata.name: Invalid value: "demo\\n": a lowercase RFC 1123 subdomain must consist of',
                 id="a trailing newline in a name"),
    pytest.param({"kind": "Service", "metadata": {"name": "1st"}, "spec": {"ports": [{"port": 80}]}},
                 'metadata.name: Invalid value: "1st": a DNS-1035 label must consist of lower case alphanumeric',
                 id="a service name that starts with a digit"),
    pytest.param({"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"app": "x" * 64}}},
                 f'metadata.labels: Invalid value: "{"x" * 64}": must be no more than 63 characters',
                 id="a label value over 63 characters"),
    pytest.param({"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"app": "a b"}}},
                 'metadata.labels: Invalid value: "a b": a valid label must be an empty string or consist of',
                 id="a label value with a space"),
    pytest.param({"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a/b/c": "x"}}},
                 'metadata.labels: Invalid value: "a/b/c": a qualified name must consist of',
                 id="a label key with two slashes"),
    pytest.param({"kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"big": "x" * 262_142}}},
                 "metadata.annotations: Too long: may not be more than 262144 bytes", id="annotations over 256 KiB"),
    pytest.param({"kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["cleanup"]}},
                 'metadata.finalizers: Invalid value: "cleanup": name is neither a standard finalizer name nor is '
                 "it fully qualified", id="an unqualified finalizer"),
])
def test_names_labels_and_annotations_follow_the_servers_syntax(kube: KubeEmulator, obj: Obj, expected: str) -> None:
    message = refused(kube, {"apiVersion": "v1", **obj})
    assert expected in message


def test_a_generate_name_prefix_follows_the_name_rule_and_may_end_in_a_dash(kube: KubeEmulator) -> None:
    message = refused(kube, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "Run-"}})
    assert 'metadata.generateName: Invalid value: "Run-": a lowercase RFC 1123 subdomain' in message
    assert kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "run-"}})


def test_two_controller_owner_references_are_refused(kube: KubeEmulator) -> None:
    owner = kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"],
           "controller": True}
    message = refused(kube, {"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "c", "ownerReferences": [ref, {**ref, "name": "again"}]}})
    assert "Only one reference can have Controller set to true" in message


# --- ConfigMaps and Services ------------------------------------------------------------------------------------


def test_config_map_keys_must_be_config_keys_and_unique_and_the_payload_at_most_1_mib(kube: KubeEmulator) -> None:
    bad_key = refused(kube, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                             "data": {"run/json": "{}"}})
    assert 'data[run/json]: Invalid value: "run/json": a valid config key must consist of' in bad_key
    both = refused(kube, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                          "data": {"k": "v"}, "binaryData": {"k": "dg=="}})
    assert "binaryData[k]: Invalid value: \"k\": duplicate of key present in another field" in both
    too_big = refused(kube, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                             "data": {"a": "x" * (1024 * 1024), "b": "y"}})
    assert too_big == 'ConfigMap "c" is invalid: []: Too long: may not be more than 1048576 bytes'
    assert kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                        "data": {"a": "x" * (1024 * 1024)}})


def service(name: str = "s", **spec: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def test_a_service_gets_the_servers_defaults_and_a_cluster_ip_that_never_changes(kube: KubeEmulator) -> None:
    created = kube.create(service(selector={"app": "x"}, ports=[{"port": 8080}]))
    spec = created["spec"]
    assert spec["ports"] == [{"port": 8080, "protocol": "TCP", "targetPort": 8080}]
    assert (spec["type"], spec["sessionAffinity"], spec["clusterIPs"]) == ("ClusterIP", "None", [spec["clusterIP"]])
    assert spec["clusterIP"].startswith("10.96.")
    assert kube.create(service("t", ports=[{"port": 80}]))["spec"]["clusterIP"] != spec["clusterIP"]
    with pytest.raises(ApiError, match=r"spec.clusterIPs\[0\]: Invalid value: \"10.96.9.9\": may not change once set"):
        kube.patch("services", "s", {"spec": {"clusterIP": "10.96.9.9"}})
    headless = kube.create(service("h", clusterIP="None", selector={"app": "x"}))
    assert headless["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize(("spec", "expected"), [
    ({"ports": []}, "spec.ports: Required value"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
    ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name: Required value"),
    ({"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]}, 'spec.ports[1].name: Duplicate value: "a"'),
    ({"ports": [{"port": 80, "protocol": "HTTP"}]}, 'spec.ports[0].protocol: Unsupported value: "HTTP"'),
    ({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]},
     "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"),
    ({"ports": [{"port": 80}], "selector": {"app": "a b"}}, 'spec.selector: Invalid value: "a b"'),
])
def test_service_ports_types_and_selectors_are_checked(kube: KubeEmulator, spec: Obj, expected: str) -> None:
    assert expected in refused(kube, service(**spec))


# --- Jobs -------------------------------------------------------------------------------------------------------


def test_a_job_gets_the_servers_defaults_generated_selector_and_pod_defaults(kube: KubeEmulator) -> None:
    manifest = job()
    manifest["spec"]["template"]["metadata"] = {"labels": {"app": "x"}}
    main_container(manifest)["env"] = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    pod_spec(manifest)["volumes"].append({"name": "cfg", "configMap": {"name": "c"}})
    created = kube.create(manifest)
    spec, uid = created["spec"], created["metadata"]["uid"]
    assert {key: spec[key] for key in ("completions", "parallelism", "backoffLimit", "completionMode", "suspend",
                                       "podReplacementPolicy")} == {
        "completions": 1, "parallelism": 1, "backoffLimit": 6, "completionMode": "NonIndexed", "suspend": False,
        "podReplacementPolicy": "TerminatingOrFailed"}
    assert spec["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert spec["template"]["metadata"]["labels"] == {
        "app": "x", "batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": "j",
        "controller-uid": uid, "job-name": "j"}
    assert created["metadata"]["labels"] == {"app": "x"}  # the template's labels, as they were before generation
    pod = spec["template"]["spec"]
    assert (pod["dnsPolicy"], pod["schedulerName"], pod["terminationGracePeriodSeconds"]) == (
        "ClusterFirst", "default-scheduler", 30)
    assert (pod["containers"][0]["imagePullPolicy"], pod["containers"][0]["terminationMessagePolicy"]) == (
        "IfNotPresent", "File")
    assert pod["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] == "v1"
    assert pod["volumes"][1]["configMap"]["defaultMode"] == 0o644


def exit_codes(values: list[int], **requirement: Any) -> Mutation:
    def mutate(obj: Obj) -> None:
        obj["spec"]["podFailurePolicy"] = {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": values, **requirement}}]}
    return mutate


def rule(**fields: Any) -> Mutation:
    def mutate(obj: Obj) -> None:
        obj["spec"]["podFailurePolicy"] = {"rules": [fields]}
    return mutate


def spec_field(**fields: Any) -> Mutation:
    return lambda obj: obj["spec"].update(fields)


def pod_field(**fields: Any) -> Mutation:
    return lambda obj: pod_spec(obj).update(fields)


def container_field(**fields: Any) -> Mutation:
    return lambda obj: main_container(obj).update(fields)


def add_container(**fields: Any) -> Mutation:
    return lambda obj: pod_spec(obj)["containers"].append(container(**fields))


JOB_CASES: list[Any] = [
    pytest.param(pod_field(restartPolicy=None), 'spec.template.spec.restartPolicy: Required value: valid values: '
                 '"OnFailure", "Never"', id="restartPolicy defaults to Always, which a Job refuses"),
    pytest.param(lambda obj: (pod_field(restartPolicy="OnFailure")(obj), exit_codes([2])(obj)),
                 'spec.template.spec.restartPolicy: Invalid value: "OnFailure": only "Never" is supported when '
                 "podFailurePolicy is specified", id="podFailurePolicy needs restartPolicy Never"),
    pytest.param(exit_codes([3, 2]), "spec.podFailurePolicy.rules[0].onExitCodes.values: Invalid value: [3,2]: "
                 "must be ordered", id="exit codes out of order"),
    pytest.param(exit_codes([2, 2]), "spec.podFailurePolicy.rules[0].onExitCodes.values[1]: Duplicate value: 2",
                 id="a repeated exit code"),
    pytest.param(exit_codes([0, 1]), "spec.podFailurePolicy.rules[0].onExitCodes.values[0]: Invalid value: 0: must "
                 "not be 0 for the In operator", id="exit code 0 with In"),
    pytest.param(exit_codes(list(range(1, 257))), "spec.podFailurePolicy.rules[0].onExitCodes.values: Too many: 256: "
                 "must have at most 255 items", id="256 exit codes"),
    pytest.param(exit_codes([2], containerName="trainer"), 'spec.podFailurePolicy.rules[0].onExitCodes.containerName:'
                 ' Invalid value: "trainer": must be one of the container or initContainer names in the pod template',
                 id="an unknown containerName"),
    pytest.param(rule(action="Retry", onExitCodes={"operator": "In", "values": [2]}),
                 'spec.podFailurePolicy.rules[0].action: Unsupported value: "Retry": supported values: "Count", '
                 '"FailIndex", "FailJob", "Ignore"', id="an unknown action"),
    pytest.param(rule(action="FailIndex", onExitCodes={"operator": "In", "values": [2]}),
                 'spec.podFailurePolicy.rules[0].action: Invalid value: "FailIndex": requires the backoffLimitPerIndex '
                 "to be set", id="FailIndex without backoffLimitPerIndex"),
    pytest.param(rule(action="Ignore", onExitCodes={"operator": "In", "values": [2]},
                      onPodConditions=[{"type": "DisruptionTarget"}]),
                 "spec.podFailurePolicy.rules[0]: Invalid value: specifying both OnExitCodes and OnPodConditions is "
                 "not supported", id="both onExitCodes and onPodConditions"),
    pytest.param(rule(action="Ignore"), "spec.podFailurePolicy.rules[0]: Invalid value: specifying one of "
                 "OnExitCodes and OnPodConditions is required", id="neither onExitCodes nor onPodConditions"),
    pytest.param(rule(action="Ignore", onPodConditions=[{"type": "DisruptionTarget", "status": "Maybe"}]),
                 'spec.podFailurePolicy.rules[0].onPodConditions[0].status: Unsupported value: "Maybe"',
                 id="a condition status other than True False Unknown"),
    pytest.param(lambda obj: (exit_codes([2])(obj), spec_field(podReplacementPolicy="TerminatingOrFailed")(obj)),
                 'spec.podReplacementPolicy: Unsupported value: "TerminatingOrFailed": supported values: "Failed"',
                 id="podReplacementPolicy with a podFailurePolicy"),
    pytest.param(spec_field(backoffLimitPerIndex=1), "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed "
                 "completion mode", id="backoffLimitPerIndex on a NonIndexed Job"),
    pytest.param(spec_field(completionMode="Indexed", parallelism=2), "spec.completions: Required value: when "
                 "completion mode is Indexed", id="an Indexed Job without completions"),
    pytest.param(spec_field(completionMode="Sometimes"), 'spec.completionMode: Unsupported value: "Sometimes"',
                 id="an unknown completion mode"),
    pytest.param(spec_field(backoffLimit=-1), "spec.backoffLimit: Invalid value: -1: must be greater than or equal "
                 "to 0", id="a negative backoffLimit"),
    pytest.param(spec_field(ttlSecondsAfterFinished=-5), "spec.ttlSecondsAfterFinished: Invalid value: -5: must be "
                 "greater than or equal to 0", id="a negative ttlSecondsAfterFinished"),
    pytest.param(lambda obj: obj["spec"]["template"].update(metadata={"labels": {"job-name": "other"}}),
                 'spec.template.metadata.labels[job-name]: Invalid value: "other": must be \'j\'',
                 id="a template label that contradicts the generated ones"),
]


@pytest.mark.parametrize(("mutate", "expected"), JOB_CASES)
def test_job_specs_the_server_refuses_are_refused(kube: KubeEmulator, mutate: Mutation, expected: str) -> None:
    manifest = job()
    mutate(manifest)
    message = refused(kube, manifest)
    assert message.startswith('Job.batch "j" is invalid: ') and expected in message, message


def test_a_hand_written_selector_without_manual_selector_gets_the_uid_and_is_refused(kube: KubeEmulator) -> None:
    manifest = job(selector={"matchLabels": {"app": "x"}})
    manifest["spec"]["template"]["metadata"] = {"labels": {"app": "x"}}
    message = refused(kube, manifest)
    assert re.search(r'spec.selector: Invalid value: \{"matchLabels":\{"app":"x","batch.kubernetes.io/controller-uid":'
                     r'"[-0-9a-f]{36}"\}\}: `selector` not auto-generated', message), message
    manifest["spec"]["manualSelector"] = True
    assert kube.create(manifest)["spec"]["selector"] == {"matchLabels": {"app": "x"}}


def test_an_indexed_job_whose_last_pod_hostname_is_no_dns_label_is_refused(kube: KubeEmulator) -> None:
    name = "x" * 62
    message = refused(kube, job(name, completionMode="Indexed", completions=10, parallelism=10))
    assert f"will not able to create pod with invalid DNS label: {name}-9" in message
    assert kube.create(job("x" * 61, completionMode="Indexed", completions=10, parallelism=10))


POD_CASES: list[Any] = [
    pytest.param(container_field(name="Train_1"), 'spec.template.spec.containers[0].name: Invalid value: "Train_1": '
                 "a lowercase RFC 1123 label", id="a container name that is no DNS label"),
    pytest.param(add_container(), 'spec.template.spec.containers[1].name: Duplicate value: "main"',
                 id="two containers of one name"),
    pytest.param(container_field(image=""), "spec.template.spec.containers[0].image: Required value",
                 id="no image"),
    pytest.param(container_field(env=[{"name": "A=B", "value": "1"}]),
                 'spec.template.spec.containers[0].env[0].name: Invalid value: "A=B": a valid environment variable',
                 id="an env var name with '='"),
    pytest.param(container_field(env=[{"name": "A", "value": "1", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.name"}}}]), "spec.template.spec.containers[0].env[0].valueFrom: Invalid value: \"\": "
        "may not be specified when `value` is not empty", id="an env var with value and valueFrom"),
    pytest.param(container_field(env=[{"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": ".metadata.name"}}}]),
                 'spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: Unsupported value: '
                 '".metadata.name"', id="a fieldPath with a leading dot"),
    pytest.param(container_field(env=[{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}}]),
                 'spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef.key: Invalid value: "a/b"',
                 id="a secret key that is no config key"),
    pytest.param(container_field(volumeMounts=[{"name": "cache", "mountPath": "/cache"}]),
                 'spec.template.spec.containers[0].volumeMounts[0].name: Not found: "cache"',
                 id="a mount of a volume that does not exist"),
    pytest.param(container_field(volumeMounts=[{"name": "scratch", "mountPath": "/s"},
                                               {"name": "scratch", "mountPath": "/s"}]),
                 'spec.template.spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/s": must be unique',
                 id="two mounts at one path"),
    pytest.param(lambda obj: pod_spec(obj)["volumes"].append({"name": "scratch", "emptyDir": {}}),
                 'spec.template.spec.volumes[1].name: Duplicate value: "scratch"', id="two volumes of one name"),
    pytest.param(lambda obj: pod_spec(obj)["volumes"].append({"name": "none"}),
                 "spec.template.spec.volumes[1]: Required value: must specify a volume type", id="a volume without "
                 "a source"),
    pytest.param(lambda obj: pod_spec(obj)["volumes"].append({"name": "cfg", "configMap": {"name": "c", "items": [
        {"key": "k", "path": "../escape"}]}}), 'spec.template.spec.volumes[1].configMap.items[0].path: Invalid value: '
        "\"../escape\": must not contain '..'", id="a configMap item path that climbs out"),
    pytest.param(lambda obj: pod_spec(obj)["volumes"][0]["emptyDir"].update(sizeLimit="-1Gi"),
                 "spec.template.spec.volumes[0].emptyDir.sizeLimit: Forbidden: SizeLimit field must be a valid "
                 "resource quantity", id="a negative emptyDir sizeLimit"),
    pytest.param(container_field(resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}),
                 'spec.template.spec.containers[0].resources.requests[memory]: Invalid value: "2Gi": must be less '
                 "than or equal to memory limit of 1Gi", id="a request above its limit"),
    pytest.param(container_field(resources={"limits": {"nvidia.com/gpu": "0.5"}}),
                 'resources.limits[nvidia.com/gpu]: Invalid value: "0.5": must be an integer', id="half a GPU"),
    pytest.param(container_field(resources={"limits": {"gpu": "1"}}),
                 'resources.limits[gpu]: Invalid value: "gpu": must be a standard resource for containers',
                 id="a resource name without a domain"),
    pytest.param(pod_field(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
                 "spec.template.spec.tolerations[0].operator: Invalid value: ", id="a value with operator Exists"),
    pytest.param(pod_field(tolerations=[{"key": "k", "operator": "Exists", "effect": "NoSchedule",
                                         "tolerationSeconds": 60}]),
                 "effect must be 'NoExecute' when `tolerationSeconds` is set", id="tolerationSeconds without NoExecute"),
    pytest.param(pod_field(nodeSelector={"pool": "gpu\n"}), 'spec.template.spec.nodeSelector: Invalid value: "gpu\\n"',
                 id="a node selector value with a newline"),
    pytest.param(pod_field(serviceAccountName="Job_Runner"), 'spec.template.spec.serviceAccountName: Invalid value: '
                 '"Job_Runner"', id="a service account name that is no DNS subdomain"),
    pytest.param(pod_field(subdomain="a.b"), 'spec.template.spec.subdomain: Invalid value: "a.b"',
                 id="a subdomain that is no DNS label"),
    pytest.param(container_field(securityContext={"privileged": True, "allowPrivilegeEscalation": False}),
                 "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
                 id="privileged without privilege escalation"),
    pytest.param(pod_field(securityContext={"seccompProfile": {"type": "Localhost"}}),
                 "spec.template.spec.securityContext.seccompProfile.localhostProfile: Required value",
                 id="a Localhost seccomp profile without its file"),
]


@pytest.mark.parametrize(("mutate", "expected"), POD_CASES)
def test_pod_templates_the_server_refuses_are_refused(kube: KubeEmulator, mutate: Mutation, expected: str) -> None:
    manifest = job()
    mutate(manifest)
    assert expected in refused(kube, manifest)


def test_a_malformed_quantity_is_a_bad_request(kube: KubeEmulator) -> None:
    manifest = job()
    main_container(manifest)["resources"] = {"limits": {"memory": "lots"}}
    assert "quantities must match the regular expression" in refused(kube, manifest, code=400)


@pytest.mark.parametrize(("text", "value"), [
    ("1.5Gi", Decimal(3 * 2**29)), ("100m", Decimal("0.1")), ("1e3", Decimal(1000)), ("1E-3", Decimal("0.001")),
    ("1.0000000001", Decimal("1.000000001")),  # rounded away from zero to whole nanos
    ("1e-20", Decimal("1e-9")), ("-1e-20", Decimal("-1e-9")), ("9Ei", Decimal(2**63 - 1)),  # binary: capped
    ("1e99999999", Decimal("1e99999999")), ("1e4294967296", Decimal(1)),  # an int64 exponent, wrapped to int32
])
def test_quantities_parse_as_the_server_parses_them_at_any_size(text: str, value: Decimal) -> None:
    assert quantity(text) == value


@pytest.mark.parametrize("text", ["1e" + "9" * 30, "1e" + "1" * 5000, "1e", "1ee3", ".", "1..2"])
def test_a_quantity_the_server_cannot_parse_is_a_bad_request(kube: KubeEmulator, text: str) -> None:
    manifest = job()
    main_container(manifest)["resources"] = {"limits": {"memory": text}}
    assert "unable to parse quantity's" in refused(kube, manifest, code=400)


def test_requests_and_limits_compare_as_parsed_quantities(kube: KubeEmulator) -> None:
    manifest = job()
    main_container(manifest)["resources"] = {"requests": {"memory": "1e99999999"}, "limits": {"memory": "1"}}
    assert "must be less than or equal to memory limit of 1" in refused(kube, manifest)
    main_container(manifest)["resources"] = {"requests": {"cpu": "1e-20"}, "limits": {"cpu": "1e-21"}}  # both 1n
    kube.create(manifest)


def test_a_job_refused_on_update_keeps_its_stored_version(kube: KubeEmulator) -> None:
    created = kube.create(job(suspend=True))
    with pytest.raises(ApiError, match=r'spec.selector: Invalid value: \{"matchLabels":\{"a":"b",.*field is immutable'):
        kube.patch("jobs", "j", {"spec": {"selector": {"matchLabels": {"a": "b"}}}})
    with pytest.raises(ApiError, match="spec.completionMode: Invalid value: .*field is immutable"):
        kube.patch("jobs", "j", {"spec": {"completionMode": "Indexed"}})
    assert kube.get("jobs", "j") == created
    moved = kube.patch("jobs", "j", {"spec": {"template": {"metadata": {"annotations": {"queue": "a"}},
                                                           "spec": {"nodeSelector": {"pool": "a"}}}}})
    assert moved["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a"}  # suspended and never started


def test_an_indexed_job_changes_completions_only_in_tandem_with_parallelism(kube: KubeEmulator) -> None:
    kube.create(job(completionMode="Indexed", completions=2, parallelism=2))
    with pytest.raises(ApiError, match="spec.completions: Invalid value: 3: can only be modified in tandem with "
                                       "spec.parallelism"):
        kube.patch("jobs", "j", {"spec": {"completions": 3}})
    assert kube.patch("jobs", "j", {"spec": {"completions": 3, "parallelism": 3}})["spec"]["completions"] == 3


def test_an_event_lives_in_the_namespace_of_the_object_it_is_about(kube: KubeEmulator) -> None:
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"}, "reason": "Created",
             "involvedObject": {"kind": "Job", "name": "j", "namespace": "elsewhere"}}
    assert 'involvedObject.namespace: Invalid value: "elsewhere": does not match event.namespace' in refused(kube, event)
    timed = {**event, "involvedObject": {"kind": "Job", "name": "j", "namespace": "default"},
             "eventTime": "2026-01-01T00:00:00.000000Z"}
    assert "reportingComponent: Required value" in refused(kube, timed)
    assert kube.create({**event, "involvedObject": {"kind": "Job", "name": "j", "namespace": "default"}})


# --- Deployments and RBAC -----------------------------------------------------------------------------------------


def deployment(**spec: Any) -> Obj:
    template = {"metadata": {"labels": {"app": "op"}}, "spec": {"containers": [container()]}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "op"},
            "spec": {"selector": {"matchLabels": {"app": "op"}}, "template": template, **spec}}


def test_deployments_need_a_matching_selector_restart_always_and_keep_their_selector(kube: KubeEmulator) -> None:
    assert "`selector` does not match template `labels`" in refused(
        kube, deployment(selector={"matchLabels": {"app": "other"}}))
    assert "spec.selector: Invalid value: {}: empty selector is invalid for deployment" in refused(
        kube, deployment(selector={}))
    never = deployment()
    never["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"' in refused(
        kube, never)
    created = kube.create(deployment())
    assert (created["spec"]["replicas"], created["spec"]["strategy"]["type"]) == (1, "RollingUpdate")
    with pytest.raises(ApiError, match="spec.selector: Invalid value: .*field is immutable"):
        kube.patch("deployments", "op", {"spec": {"selector": {"matchLabels": {"app": "op", "v": "2"}}}})


def rbac(kind: str, name: str = "r", **fields: Any) -> Obj:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}, **fields}


@pytest.mark.parametrize(("obj", "expected"), [
    (rbac("Role", rules=[{"apiGroups": [""], "resources": ["pods"]}]),
     "rules[0].verbs: Required value: verbs must contain at least one value"),
    (rbac("Role", rules=[{"resources": ["pods"], "verbs": ["get"]}]),
     "rules[0].apiGroups: Required value: resource rules must supply at least one api group"),
    (rbac("Role", rules=[{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]),
     'rules[0].nonResourceURLs: Invalid value: ["/metrics"]: namespaced rules cannot apply to non-resource URLs'),
    (rbac("Role", "a%b", rules=[]), "metadata.name: Invalid value: \"a%b\": may not contain '%'"),
    (rbac("RoleBinding", roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
          subjects=[{"kind": "ServiceAccount", "apiGroup": "rbac.authorization.k8s.io", "name": "op"}]),
     'subjects[0].apiGroup: Unsupported value: "rbac.authorization.k8s.io": supported values: ""'),
    (rbac("ClusterRoleBinding", roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
          subjects=[{"kind": "ServiceAccount", "name": "op"}]),
     'roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"'),
    (rbac("ClusterRoleBinding", roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "r"},
          subjects=[{"kind": "ServiceAccount", "name": "op"}]), "subjects[0].namespace: Required value"),
])
def test_rbac_objects_the_server_refuses_are_refused(kube: KubeEmulator, obj: Obj, expected: str) -> None:
    assert expected in refused(kube, obj)


def test_a_role_bindings_role_ref_cannot_change(kube: KubeEmulator) -> None:
    kube.create(rbac("RoleBinding", "b", roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                  "name": "r"}))
    with pytest.raises(ApiError, match="roleRef: Invalid value: .*cannot change roleRef"):
        kube.patch("rolebindings", "b", {"roleRef": {"name": "other"}})


# --- Pod Security Admission ---------------------------------------------------------------------------------------


def pod(name: str = "p", namespace: str = "secure", secure: bool = False, **spec: Any) -> Obj:
    main = container(securityContext=copy.deepcopy(SECURE_CONTAINER)) if secure else container()
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [main], **spec}}


def test_a_restricted_namespace_refuses_a_pod_like_the_server(kube: KubeEmulator) -> None:
    restricted(kube)
    assert refused(kube, pod(), code=403) == (
        'pods "p" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false '
        '(container "main" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities '
        '(container "main" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or '
        'container "main" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "main" must '
        'set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    assert kube.create(pod(secure=True))["metadata"]["name"] == "p"


@pytest.mark.parametrize(("mutate", "expected"), [
    pytest.param(lambda p: p["spec"].update(volumes=[{"name": name, "hostPath": {"path": "/"}} for name in "ab"]),
                 'restricted volume types (volumes "a", "b" use restricted volume type "hostPath")',
                 id="hostPath volumes"),
    pytest.param(lambda p: p["spec"].update(hostNetwork=True, hostPID=True),
                 "host namespaces (hostNetwork=true, hostPID=true)", id="host namespaces"),
    pytest.param(lambda p: p["spec"]["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
                 'allowPrivilegeEscalation != false (container "main" must set '
                 "securityContext.allowPrivilegeEscalation=false)", id="privilege escalation"),
    pytest.param(lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
                 'unrestricted capabilities (container "main" must not include "SYS_ADMIN" in '
                 "securityContext.capabilities.add)", id="an added capability"),
    pytest.param(lambda p: (p["spec"].update(securityContext={"runAsUser": 0}),
                            p["spec"]["containers"][0]["securityContext"].update(runAsUser=0)),
                 'runAsUser=0 (pod and container "main" must not set runAsUser=0)', id="root"),
    pytest.param(lambda p: p["spec"]["containers"][0]["securityContext"].update(runAsNonRoot=False),
                 'runAsNonRoot != true (container "main" must not set securityContext.runAsNonRoot=false)',
                 id="runAsNonRoot false"),
    pytest.param(lambda p: p["spec"]["containers"][0]["securityContext"].update(
        seccompProfile={"type": "Unconfined"}), 'seccompProfile (container "main" must not set '
        'securityContext.seccompProfile.type to "Unconfined")', id="an unconfined seccomp profile"),
    pytest.param(lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
                 'hostPort (container "main" uses hostPort 80)', id="a host port"),
    pytest.param(lambda p: p["spec"].update(securityContext={"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}),
                 "forbidden sysctls (kernel.msgmax)", id="an unsafe sysctl"),
])
def test_each_restricted_check_refuses_what_it_covers(kube: KubeEmulator, mutate: Mutation, expected: str) -> None:
    restricted(kube)
    manifest = pod(secure=True)
    mutate(manifest)
    message = refused(kube, manifest, code=403)
    assert message.startswith('pods "p" is forbidden: violates PodSecurity "restricted:latest": ') and expected in (
        message), message


def test_several_violations_read_as_a_real_server_wrote_them(kube: KubeEmulator) -> None:
    """The message a v1.2x server gave for such a pod (a ReplicaSet's FailedCreate Event, pod name aside)."""
    restricted(kube, "production")
    manifest = pod("api-server", namespace="production", securityContext={"runAsUser": 0, "runAsGroup": 0})
    manifest["spec"]["containers"][0].update(name="api", securityContext={
        "privileged": True, "runAsNonRoot": False, "capabilities": {"add": ["NET_ADMIN", "SYS_TIME"]}})
    assert refused(kube, manifest, code=403) == (
        'pods "api-server" is forbidden: violates PodSecurity "restricted:latest": privileged (container "api" must '
        'not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "api" must set '
        'securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "api" must set '
        'securityContext.capabilities.drop=["ALL"]; container "api" must not include "NET_ADMIN", "SYS_TIME" in '
        'securityContext.capabilities.add), runAsNonRoot != true (container "api" must not set '
        'securityContext.runAsNonRoot=false), runAsUser=0 (pod must not set runAsUser=0), seccompProfile (pod or '
        'container "api" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')


def test_a_namespace_names_a_pod_security_level_and_version_the_server_knows(kube: KubeEmulator) -> None:
    with pytest.raises(ApiError) as refused_level:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "typo", "labels": {"pod-security.kubernetes.io/enforce": "strict"}}})
    assert refused_level.value.message == (
        'Namespace "typo" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": '
        "must be one of privileged, baseline, restricted")
    restricted(kube, "team")
    with pytest.raises(ApiError, match=r'metadata.labels\[pod-security.kubernetes.io/warn-version\]: Invalid value: '
                                       r'"1.30": must be "latest" or "v1.x"'):
        kube.patch("namespaces", "team", {"metadata": {"labels": {"pod-security.kubernetes.io/warn-version": "1.30"}}},
                   None)
    assert kube.find("namespaces", "typo", None) is None


def test_a_baseline_namespace_admits_a_plain_pod_and_refuses_a_privileged_one(kube: KubeEmulator) -> None:
    restricted(kube, "base", level="baseline")
    assert kube.create(pod(namespace="base"))
    privileged = pod("q", namespace="base")
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    privileged["spec"]["volumes"] = [{"name": "host", "hostPath": {"path": "/var/log"}}]
    assert refused(kube, privileged, code=403) == (
        'pods "q" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "host"), privileged '
        '(container "main" must not set securityContext.privileged=true)')


def test_a_job_whose_pods_would_be_forbidden_is_refused_and_an_invalid_one_gets_422_first(kube: KubeEmulator) -> None:
    restricted(kube)
    message = refused(kube, job("train", namespace="secure"), code=403)
    assert message.startswith('pods "train-" is forbidden: violates PodSecurity "restricted:latest": ')
    indexed = refused(kube, job("train", namespace="secure", completionMode="Indexed", completions=2), code=403)
    assert indexed.startswith('pods "train-0-" is forbidden')
    invalid = job("train", namespace="secure")
    pod_spec(invalid)["restartPolicy"] = "Always"
    assert refused(kube, invalid, code=422).startswith('Job.batch "train" is invalid: ')
    assert kube.create(job("train", namespace="secure", secure=True))
    assert kube.create(job("anywhere"))  # an unlabelled namespace enforces nothing


def test_refusals_arrive_as_status_objects_over_http(kube: KubeEmulator) -> None:
    restricted(kube)
    api = KubeHttp(kube.url)
    forbidden = api.post("/api/v1/namespaces/secure/pods", pod())
    assert (forbidden.status, forbidden.body["kind"], forbidden.body["reason"], forbidden.body["code"]) == (
        403, "Status", "Forbidden", 403)
    bad = job()
    pod_spec(bad)["restartPolicy"] = "Always"
    main_container(bad)["name"] = "Main"
    invalid = api.post("/apis/batch/v1/namespaces/default/jobs", bad)
    assert (invalid.status, invalid.body["reason"]) == (422, "Invalid")
    assert invalid.body["message"].startswith('Job.batch "j" is invalid: [spec.template.spec.containers[0].name: ')
    details = invalid.body["details"]
    assert (details["kind"], details["group"], details["name"]) == ("Job", "batch", "j")
    assert [(cause["field"], cause["reason"]) for cause in details["causes"]] == [
        ("spec.template.spec.containers[0].name", "FieldValueInvalid"),
        ("spec.template.spec.restartPolicy", "FieldValueRequired")]
    assert details["causes"][1]["message"] == 'Required value: valid values: "OnFailure", "Never"'
