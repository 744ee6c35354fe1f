"""The Helm chart, rendered by real Helm (helm-python-sdk), for the default values and for values that turn everything
on: every object validates against the Kubernetes schemas, the operator gets exactly the environment its settings
read and exactly the API access its code uses, and the pods run under the restricted security profile."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune.operator.rbac import NOTIFY_RULES, PEERING_RULES, RULES
from kubetune.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
RELEASE, NAMESPACE = "kubetune", "kubetune-system"
Obj = dict[str, Any]

VALUE_SETS: dict[str, Obj] = {
    "defaults": {},
    "all-on": yaml.safe_load(ALL_ON.read_text()),
    "metrics-off": {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
    "one-namespace-with-peering": {"operator": {"watchNamespaces": ["ml-team"], "standalone": False}},
}


@cache
def rendered(value_set: str) -> tuple[Obj, ...]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(VALUE_SETS[value_set], name=RELEASE, namespace=NAMESPACE)
    return tuple(doc for path, text in sorted(manifests.items()) if not path.endswith("NOTES.txt")
                 for doc in yaml.safe_load_all(text) if doc)


def notes(value_set: str) -> str:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(VALUE_SETS[value_set], name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def of_kind(value_set: str, kind: str) -> list[Obj]:
    return [o for o in rendered(value_set) if o["kind"] == kind]


def deployment(value_set: str) -> Obj:
    (found,) = of_kind(value_set, "Deployment")
    return found


def container(value_set: str) -> Obj:
    (found,) = deployment(value_set)["spec"]["template"]["spec"]["containers"]
    return found


def plain_env(value_set: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(value_set)["env"] if "value" in e}


def values(value_set: str) -> Obj:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(VALUE_SETS[value_set])


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every variable read from it."""

    def __init__(self, variables: Mapping[str, str]) -> None:
        self.variables = dict(variables)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self.variables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.variables)

    def __len__(self) -> int:
        return len(self.variables)


# --- lint and schemas -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_finds_no_warnings_or_errors(value_set: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert (report["errors"], problems) == ([], [])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_validates_against_the_kubernetes_schemas(value_set: str) -> None:
    version = kubernetes_validate.latest_version()
    objects = [o for o in rendered(value_set) if o["apiVersion"] != "monitoring.coreos.com/v1"]
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_crd_validates_against_the_kubernetes_schemas() -> None:
    with helm.Chart.load(CHART) as chart:
        (crd,) = chart.crds
    kubernetes_validate.validate(yaml.safe_load(crd["data"]), kubernetes_validate.latest_version(), strict=True)


# The fields of monitoring.coreos.com/v1 ServiceMonitor the chart writes (the Prometheus Operator's CRD is not among
# kubernetes-validate's schemas), with the operator's duration pattern.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"], "additionalProperties": False,
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS}},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"], "additionalProperties": False,
                             "properties": {"matchLabels": LABELS}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                                   "interval": {"type": "string", "pattern": DURATION},
                                   "scrapeTimeout": {"type": "string", "pattern": DURATION}}}},
            },
        },
    },
}


def test_service_monitor_is_well_formed_and_scrapes_the_metrics_service() -> None:
    (monitor,) = of_kind("all-on", "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    (service,) = [s for s in of_kind("all-on", "Service") if s["metadata"]["name"].endswith("-metrics")]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # the selector label from values
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


def test_service_monitor_schema_rejects_a_malformed_monitor() -> None:
    (monitor,) = of_kind("all-on", "ServiceMonitor")
    broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": "metrics", "interval": "15 seconds"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SERVICE_MONITOR_SCHEMA)


# --- the operator's environment: exactly what operator/settings.py reads ------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_operator_env_sets_exactly_the_variables_the_settings_read(value_set: str) -> None:
    recorder = RecordingEnv({})
    OperatorSettings.from_env(recorder)
    rendered_names = {name for name in plain_env(value_set) if name.startswith("KUBETUNE_")}
    assert rendered_names == recorder.read
    assert not [e for e in container(value_set)["env"] if e["name"].startswith("KUBETUNE_") and "value" not in e]


def test_default_values_give_the_operators_default_settings() -> None:
    assert OperatorSettings.from_env(plain_env("defaults")) == OperatorSettings()


def test_all_on_values_reach_the_operator_settings() -> None:
    settings = OperatorSettings.from_env(plain_env("all-on"))
    given = VALUE_SETS["all-on"]
    assert settings.job_image == (f"{given['image']['job']['repository']}:{given['image']['job']['tag']}"
                                  f"@{given['image']['job']['digest']}")
    assert settings.job_command == tuple(given["jobs"]["command"])
    assert settings.job_image_pull_policy == "Always"
    assert settings.job_service_account == given["serviceAccount"]["job"]["name"]
    assert (settings.store_uri, settings.store_endpoint, settings.store_region, settings.store_path_style,
            settings.credentials_secret) == (given["storage"]["uri"], given["storage"]["endpoint"],
                                             given["storage"]["region"], True, given["storage"]["credentialsSecret"])
    assert dict(settings.node_selector) == given["jobs"]["nodeSelector"]
    assert [tol.to_manifest() for tol in settings.tolerations] == given["jobs"]["tolerations"]
    assert (settings.queue_name, settings.priority_class_name) == ("gpu-queue", "training")
    assert (settings.train_gpus, settings.backoff_limit, settings.ttl_seconds_after_finished) == (2, 4, 2592000)
    assert settings.namespaces == ("ml-team", "ml-research")
    assert settings.reconcile_interval == 2.5
    assert settings.superseded_job_grace == 120.0
    assert (settings.metrics_port, settings.health_port, settings.standalone) == (9191, 8081, False)


def test_metrics_off_turns_the_server_service_and_monitor_off() -> None:
    assert OperatorSettings.from_env(plain_env("metrics-off")).metrics_port == 0
    assert of_kind("metrics-off", "Service") == [] and of_kind("metrics-off", "ServiceMonitor") == []
    assert "metrics" not in {p["name"] for p in container("metrics-off")["ports"]}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_container_ports_are_the_ports_the_operator_listens_on(value_set: str) -> None:
    settings = OperatorSettings.from_env(plain_env(value_set))
    ports = {p["name"]: p["containerPort"] for p in container(value_set)["ports"]}
    assert ports["health"] == settings.health_port
    if settings.metrics_port:
        assert ports["metrics"] == settings.metrics_port
        (service,) = [s for s in of_kind(value_set, "Service") if s["metadata"]["name"].endswith("-metrics")]
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    if settings.web_port:
        assert ports["web"] == settings.web_port


def test_operator_reads_the_default_stores_credentials_from_the_secret_by_reference() -> None:
    env = {e["name"]: e for e in container("all-on")["env"]}
    secret = VALUE_SETS["all-on"]["storage"]["credentialsSecret"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert not any(name.startswith("AWS_") for name in plain_env("defaults"))


# --- the Deployment -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_one_operator_replaced_by_recreate(value_set: str) -> None:
    spec = deployment(value_set)["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_probes_use_kopfs_health_endpoint(value_set: str) -> None:
    main = container(value_set)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_operator_pod_meets_the_restricted_pod_security_standard(value_set: str) -> None:
    pod = deployment(value_set)["spec"]["template"]["spec"]
    main = container(value_set)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] != 0
    security = main["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m for m in main["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert not any("hostPath" in v for v in pod["volumes"])
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]


def test_images_are_pinned_by_tag_and_digest_when_given() -> None:
    assert container("defaults")["image"] == "ghcr.io/kubetune/kubetune-operator:0.1.0"
    given = VALUE_SETS["all-on"]["image"]["operator"]
    assert container("all-on")["image"] == f"{given['repository']}:{given['tag']}@{given['digest']}"
    assert container("all-on")["imagePullPolicy"] == "Always"


def test_pod_scheduling_values_reach_the_operator_pod() -> None:
    pod = deployment("all-on")["spec"]["template"]["spec"]
    operator = VALUE_SETS["all-on"]["operator"]
    assert pod["nodeSelector"] == operator["nodeSelector"]
    assert pod["tolerations"] == operator["tolerations"]
    assert pod["affinity"] == operator["affinity"]
    assert pod["priorityClassName"] == operator["priorityClassName"]
    assert pod["imagePullSecrets"] == VALUE_SETS["all-on"]["imagePullSecrets"]
    template = deployment("all-on")["spec"]["template"]["metadata"]
    assert operator["podLabels"].items() <= template["labels"].items()
    assert template["annotations"] == operator["podAnnotations"]


# --- ServiceAccounts ------------------------------------------------------------------------------------------------


def service_accounts(value_set: str, component: str) -> list[Obj]:
    return [sa for sa in of_kind(value_set, "ServiceAccount")
            if sa["metadata"]["labels"]["app.kubernetes.io/component"] == component]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_operator_pod_runs_as_the_operator_service_account(value_set: str) -> None:
    (account,) = service_accounts(value_set, "operator")
    pod = deployment(value_set)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_jobs_service_account_has_no_token_and_no_role(value_set: str) -> None:
    accounts = service_accounts(value_set, "job")
    assert accounts
    settings = OperatorSettings.from_env(plain_env(value_set))
    for account in accounts:
        assert account["automountServiceAccountToken"] is False
        assert account["metadata"]["name"] == settings.job_service_account
    bound = {(s["name"], s.get("namespace")) for kind in ("RoleBinding", "ClusterRoleBinding")
             for binding in of_kind(value_set, kind) for s in binding["subjects"]}
    assert not bound & {(a["metadata"]["name"], a["metadata"]["namespace"]) for a in accounts}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_jobs_service_account_exists_wherever_runs_are_served(value_set: str) -> None:
    merged = values(value_set)
    expected = {NAMESPACE, *merged["operator"]["watchNamespaces"], *merged["serviceAccount"]["job"]["extraNamespaces"]}
    assert {a["metadata"]["namespace"] for a in service_accounts(value_set, "job")} == expected


# --- NOTES.txt ------------------------------------------------------------------------------------------------------


def test_notes_tell_how_to_create_the_secret_and_watch_a_run() -> None:
    text = notes("all-on")
    assert "kubectl -n kubetune-system create secret generic kubetune-s3" in text
    assert "kubectl get ftr -w" in text
    assert "ml-team, ml-research" in text
    assert "every FineTuneRun must set spec.storage.uri" in notes("defaults")


# --- RBAC: exactly the operator's rules ----------------------------------------------------------------------------


def grants(rules: list[Obj] | tuple[Any, ...]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples: the permissions a rule list amounts to, whatever its grouping."""
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def expected_grants(value_set: str) -> set[tuple[str, str, str]]:
    standalone = OperatorSettings.from_env(plain_env(value_set)).standalone
    notify = values(value_set)["notify"]["enabled"]
    return grants(RULES) | (set() if standalone else grants(PEERING_RULES)) | (grants(NOTIFY_RULES) if notify else set())


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_rbac_rules_equal_the_operators_calls(value_set: str) -> None:
    roles = of_kind(value_set, "ClusterRole") + of_kind(value_set, "Role")
    assert roles
    for role in roles:
        assert grants(role["rules"]) == expected_grants(value_set), role["metadata"]
        assert not [r for r in role["rules"] if set(r) - {"apiGroups", "resources", "verbs"}]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rbac_grants_no_wildcards_and_secrets_only_one_by_name_and_only_for_notifications(value_set: str) -> None:
    notify = values(value_set)["notify"]["enabled"]
    for role in of_kind(value_set, "ClusterRole") + of_kind(value_set, "Role"):
        for group, resource, verb in grants(role["rules"]):
            assert "*" not in (group, resource, verb)
            assert resource not in ("pods/exec", "serviceaccounts/token")
            # spec.notify's webhook URLs: a get of the Secret a run names, never a list or watch of them all.
            assert resource != "secrets" or (notify and verb == "get")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_cluster_wide_or_per_namespace_access_follows_the_watched_namespaces(value_set: str) -> None:
    watched = OperatorSettings.from_env(plain_env(value_set)).namespaces
    cluster_roles, roles = of_kind(value_set, "ClusterRole"), of_kind(value_set, "Role")
    bindings = of_kind(value_set, "ClusterRoleBinding") + of_kind(value_set, "RoleBinding")
    if watched:
        assert cluster_roles == [] and of_kind(value_set, "ClusterRoleBinding") == []
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    else:
        assert roles == [] and of_kind(value_set, "RoleBinding") == []
        assert len(cluster_roles) == 1
    (operator_account,) = service_accounts(value_set, "operator")
    role_names = {(r["kind"], r["metadata"]["name"], r["metadata"].get("namespace")) for r in cluster_roles + roles}
    assert len(bindings) == len(role_names)
    for binding in bindings:
        namespace = binding["metadata"].get("namespace")
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"], namespace) in role_names
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": operator_account["metadata"]["name"],
                                        "namespace": NAMESPACE}]
