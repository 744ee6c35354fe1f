"""The kubectl commands our README, chart README and docs tell users to run, run with the real kubectl binary against
the emulator: it speaks to the server as users' kubectl does (discovery, OpenAPI v3, `fieldValidation=Strict`,
client-side apply's JSON merge patch, server-side apply, Tables for `kubectl get`), so the emulator must answer as
kube-apiserver does for these to pass. Where kubectl and the server disagree with what our docs promise, the product
is wrong, not the test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.emulator import KubeEmulator

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds/kubetune.dev_finetuneruns.yaml"
CHART_CRDS = REPO / "charts/kubetune/crds"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
KUBECTL = shutil.which("kubectl", path="/usr/bin") or ""
# Examples meant for `kubetune run` only: a server refuses their relative paths, as their comments say
LOCAL_ONLY = {"local-messages.yaml": 'spec.dataset.uri: Invalid value: "./data/chats.jsonl"'}

pytestmark = pytest.mark.skipif(not KUBECTL, reason="kubectl is not installed (Debian package kubectl)")


@dataclass
class Result:
    code: int
    out: str
    err: str


class Kubectl:
    """The real kubectl on a kubeconfig for the emulator, with its caches in the test's folder."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "KUBECONFIG": str(kubeconfig),
            "KUBECACHEDIR": str(home / "cache"),
        }

    def run(self, *args: str, stdin: str | None = None) -> Result:
        done = subprocess.run(
            [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=60, check=False
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        """Run a command that must succeed; its stdout."""
        result = self.run(*args, stdin=stdin)
        assert result.code == 0, f"kubectl {' '.join(args)} failed ({result.code}): {result.err}"
        return result.out

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))


@dataclass
class Cluster:
    kube: KubeEmulator
    kubectl: Kubectl
    crd_applied: str  # what `kubectl apply -f crds/...` printed


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One emulator for the module, the CRD installed by `kubectl apply` as the README says; each test works in its
    own namespace or on its own run names."""
    home = tmp_path_factory.mktemp("kubectl")
    with KubeEmulator() as kube:
        kubectl = Kubectl(kube.write_kubeconfig(home / "kubeconfig"), home)
        yield Cluster(kube, kubectl, kubectl("apply", "-f", str(CRD_FILE)))


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


def manifest(name: str, **spec: Any) -> str:
    return yaml.safe_dump({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": name},
                           "spec": spec})


def namespace(cluster: Cluster, name: str) -> str:
    cluster.kubectl("create", "namespace", name)
    return name


def holds(served: Any, written: Any) -> bool:
    """Every value the manifest wrote is served (the server adds defaults; whole floats may come back as integers)."""
    if isinstance(written, dict):
        return isinstance(served, dict) and all(key in served and holds(served[key], v) for key, v in written.items())
    if isinstance(written, list):
        return isinstance(served, list) and len(served) == len(written) and all(map(holds, served, written))
    return bool(served == written)


def table(text: str) -> list[list[str]]:
    """kubectl's table output as rows of cells (columns are separated by at least two spaces or one past a cell)."""
    lines = [line for line in text.splitlines() if line.strip()]
    starts = [match.start() for match in re.finditer(r"(?:(?<=\s{3})|^)\S", lines[0])]
    return [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)] for line in lines]


# ------------------------------------------------------------------------------------------------------ the CRD


def test_the_crd_applies_and_kubectl_waits_until_it_is_established(cluster: Cluster) -> None:
    assert cluster.crd_applied == "customresourcedefinition.apiextensions.k8s.io/finetuneruns.kubetune.dev created\n"
    waited = cluster.kubectl("wait", "--for=condition=Established", "crd/finetuneruns.kubetune.dev", "--timeout=20s")
    assert waited == "customresourcedefinition.apiextensions.k8s.io/finetuneruns.kubetune.dev condition met\n"


def test_the_charts_crd_folder_applies_over_it_client_side_and_server_side(cluster: Cluster) -> None:
    """charts/kubetune/README: after a chart upgrade, `kubectl apply -f charts/kubetune/crds/` (or --server-side)."""
    name = "customresourcedefinition.apiextensions.k8s.io/finetuneruns.kubetune.dev"
    client_side = cluster.kubectl.run("apply", "-f", str(CHART_CRDS))
    assert (client_side.code, client_side.out) == (0, f"{name} unchanged\n"), client_side.err
    server_side = cluster.kubectl.run("apply", "--server-side", "-f", str(CHART_CRDS))
    assert (server_side.code, server_side.out) == (0, f"{name} serverside-applied\n"), server_side.err
    served = cluster.kubectl.json("get", "crd", "finetuneruns.kubetune.dev")
    assert served["spec"]["versions"] == crd()["spec"]["versions"]


# ---------------------------------------------------------------------------------------------------- examples


def test_every_example_applies_except_the_local_only_one_which_the_server_refuses(cluster: Cluster) -> None:
    namespace(cluster, "ml-team")  # examples/full.yaml lives there
    for path in EXAMPLES:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        result = cluster.kubectl.run("apply", "-f", str(path))
        if path.name in LOCAL_ONLY:
            assert result.code == 1
            assert f'The FineTuneRun "{documents[0]["metadata"]["name"]}" is invalid: ' in result.err
            assert LOCAL_ONLY[path.name] in result.err
            continue
        assert result.code == 0, f"{path.name}: {result.err}"
        expected = [f'finetunerun.kubetune.dev/{doc["metadata"]["name"]} created' for doc in documents]
        assert result.out.splitlines() == expected, path.name
        for doc in documents:
            served = cluster.kubectl.json("get", "ftr", doc["metadata"]["name"],
                                          "-n", doc["metadata"].get("namespace", "default"))
            assert holds(served["spec"], doc["spec"] or {}), f"{path.name}: the server lost part of the spec"
    listed = table(cluster.kubectl("get", "ftr", "-A"))
    names = {(row[0], row[1]) for row in listed[1:]}
    expected_names = {
        (doc["metadata"].get("namespace", "default"), doc["metadata"]["name"])
        for path in EXAMPLES if path.name not in LOCAL_ONLY
        for doc in yaml.safe_load_all(path.read_text()) if doc
    }
    assert expected_names <= names


# -------------------------------------------------------------------------------------------------------- get


def test_get_shows_the_crds_printer_columns_and_wide_adds_the_priority_ones(cluster: Cluster) -> None:
    ns = namespace(cluster, "printing")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest("shown"))
    cluster.kube.patch_status("ftr", "shown", {"phase": "Running", "currentStage": "train", "progressText": "3/10",
                                                "progress": {"loss": 1.25}, "message": "training"}, ns)
    columns = crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    short = table(cluster.kubectl("get", "ftr", "-n", ns))
    assert short[0] == ["NAME", *[c["name"].upper() for c in columns if not c.get("priority")]]
    assert short[1][:5] == ["shown", "Running", "train", "3/10", "1.25"]
    assert re.fullmatch(r"\d+s", short[1][5])  # Age, a date column: the server's human duration
    wide = table(cluster.kubectl("get", "ftr", "-n", ns, "-o", "wide"))
    assert wide[0] == ["NAME", *[c["name"].upper() for c in columns]]
    assert wide[1][-1] == "training"
    assert cluster.kubectl("get", "ftr", "shown", "-n", ns, "-o", "jsonpath={.status.phase}") == "Running"


def test_get_watch_prints_a_row_with_the_printer_columns_for_every_change(cluster: Cluster) -> None:
    """docs/cluster-quickstart.md: `kubectl get ftr -w` shows the phase as it changes."""
    ns = namespace(cluster, "watching")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest("watched"))
    watch = subprocess.Popen([KUBECTL, "get", "ftr", "-n", ns, "-w"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=cluster.kubectl.env)
    try:
        assert watch.stdout is not None
        header, first = watch.stdout.readline(), watch.stdout.readline()
        cluster.kube.patch_status("ftr", "watched", {"phase": "Running", "currentStage": "dataset"}, ns)
        changed = watch.stdout.readline()
    finally:
        watch.terminate()
        watch.wait(timeout=30)
    assert header.split() == ["NAME", "PHASE", "STAGE", "PROGRESS", "LOSS", "AGE"]
    assert re.fullmatch(r"watched +\d+s\n", first)  # each event's row is aligned on its own, empty cells blank
    assert re.fullmatch(r"watched +Running +dataset +\d+s\n", changed)


def test_kubectl_wait_on_a_jsonpath_sees_the_phase_the_operator_writes(cluster: Cluster) -> None:
    ns = namespace(cluster, "waiting")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest("waited"))
    cluster.kube.patch_status("ftr", "waited", {"phase": "Succeeded"}, ns)
    waited = cluster.kubectl("wait", "-n", ns, "--for=jsonpath={.status.phase}=Succeeded", "ftr/waited",
                             "--timeout=20s")
    assert waited == "finetunerun.kubetune.dev/waited condition met\n"


# ---------------------------------------------------------------------------------------------------- explain


def test_explain_documents_the_spec_from_the_crds_schema(cluster: Cluster) -> None:
    """README: `kubectl explain finetunerun.spec.training` documents every field."""
    training = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["training"]
    explained = cluster.kubectl("explain", "finetunerun.spec.training")
    assert "KIND:       FineTuneRun" in explained and "VERSION:    v1alpha1" in explained
    assert "FIELD: training <Object>" in explained
    assert " ".join(training["description"].split()) in " ".join(explained.split())
    listed = re.findall(r"^  (\w+)\t<", explained, re.MULTILINE)
    assert listed == sorted(training["properties"])
    epochs = cluster.kubectl("explain", "finetunerun.spec.training.epochs")
    assert " ".join(training["properties"]["epochs"]["description"].split()) in " ".join(epochs.split())


# ------------------------------------------------------------------------------------------ apply after an edit


def test_client_side_apply_after_an_edit_patches_only_the_change(cluster: Cluster) -> None:
    ns = namespace(cluster, "client-side")
    first = manifest("edited", training={"epochs": 2, "learningRate": 0.001})
    assert cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=first) == "finetunerun.kubetune.dev/edited created\n"
    again = cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=first)
    assert again == "finetunerun.kubetune.dev/edited unchanged\n"
    edited = manifest("edited", training={"epochs": 3})  # learningRate removed: back to its default
    assert cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=edited) == "finetunerun.kubetune.dev/edited configured\n"
    served = cluster.kubectl.json("get", "ftr", "edited", "-n", ns)
    default_rate = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "training"]["properties"]["learningRate"]["default"]
    assert served["spec"]["training"]["epochs"] == 3
    assert served["spec"]["training"]["learningRate"] == default_rate
    assert served["metadata"]["generation"] == 2
    assert "managedFields" not in served["metadata"]  # kubectl hides them unless --show-managed-fields
    stored = cluster.kube.get("ftr", "edited", ns)
    managers = {(e["manager"], e["operation"]) for e in stored["metadata"]["managedFields"]}
    assert managers == {("kubectl-client-side-apply", "Update")}


def test_the_quickstarts_patch_and_annotate_commands_change_the_run(cluster: Cluster) -> None:
    """docs/cluster-quickstart.md: pause with a merge patch, annotate to replace superseded Jobs."""
    ns = namespace(cluster, "quickstart")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest("paused"))
    patched = cluster.kubectl("patch", "ftr", "paused", "-n", ns, "--type", "merge", "-p", '{"spec":{"suspend":true}}')
    assert patched == "finetunerun.kubetune.dev/paused patched\n"
    annotated = cluster.kubectl("annotate", "ftr", "paused", "-n", ns, "kubetune.dev/replace-superseded-jobs=true")
    assert annotated == "finetunerun.kubetune.dev/paused annotated\n"
    served = cluster.kube.get("ftr", "paused", ns)
    assert served["spec"]["suspend"] is True
    assert served["metadata"]["annotations"]["kubetune.dev/replace-superseded-jobs"] == "true"
    secret = cluster.kubectl("create", "secret", "generic", "kubetune-s3", "-n", ns,
                             "--from-literal=AWS_ACCESS_KEY_ID=key", "--from-literal=AWS_SECRET_ACCESS_KEY=secret")
    assert secret == "secret/kubetune-s3 created\n"


def test_server_side_apply_owns_fields_and_refuses_to_take_another_managers(cluster: Cluster) -> None:
    ns = namespace(cluster, "server-side")
    applied = manifest("owned", training={"epochs": 2})
    out = cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", stdin=applied)
    assert out == "finetunerun.kubetune.dev/owned serverside-applied\n"
    edited = manifest("owned", training={"epochs": 4})
    cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", stdin=edited)
    served = cluster.kube.get("ftr", "owned", ns)
    assert served["spec"]["training"]["epochs"] == 4
    [entry] = served["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == ("kubectl", "Apply")
    assert entry["fieldsV1"] == {"f:spec": {"f:training": {"f:epochs": {}}}}

    other = manifest("owned", training={"epochs": 1})
    refused = cluster.kubectl.run("apply", "--server-side", "--field-manager=tuner", "-n", ns, "-f", "-",
                                  stdin=other)
    assert refused.code == 1
    assert refused.err.startswith(
        'error: Apply failed with 1 conflict: conflict with "kubectl": .spec.training.epochs\n'
        "Please review the fields above--they currently have other managers."
    )
    assert cluster.kube.get("ftr", "owned", ns)["spec"]["training"]["epochs"] == 4
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=tuner", "-n", ns, "-f", "-",
                    stdin=other)
    served = cluster.kube.get("ftr", "owned", ns)
    assert served["spec"]["training"]["epochs"] == 1
    assert [e["manager"] for e in served["metadata"]["managedFields"]] == ["tuner"]  # kubectl lost its only field

    dropped = manifest("owned")  # tuner stops managing epochs: it goes back to its default
    cluster.kubectl("apply", "--server-side", "--field-manager=tuner", "-n", ns, "-f", "-", stdin=dropped)
    assert cluster.kube.get("ftr", "owned", ns)["spec"]["training"]["epochs"] == 1  # the default is 1 as well


def test_server_side_apply_takes_over_fields_client_side_apply_set_with_the_same_values(cluster: Cluster) -> None:
    """The server lets kubectl's server-side apply take the fields the last-applied annotation describes."""
    ns = namespace(cluster, "upgrade")
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest("moved", training={"epochs": 2}))
    another = cluster.kubectl.run("apply", "--server-side", "--field-manager=tuner", "-n", ns, "-f", "-",
                                  stdin=manifest("moved", training={"epochs": 5}))  # only kubectl's own is upgraded
    assert another.code == 1
    assert re.match(r'error: Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using '
                    r"kubetune.dev/v1alpha1 at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: .spec.training.epochs\n", another.err)
    out = cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", stdin=manifest("moved", training={"epochs": 5}))
    assert out == "finetunerun.kubetune.dev/moved serverside-applied\n"
    served = cluster.kube.get("ftr", "moved", ns)
    assert served["spec"]["training"]["epochs"] == 5
    assert ("kubectl", "Apply") in {(e["manager"], e["operation"]) for e in served["metadata"]["managedFields"]}


def lists_of_objects(value: Any, path: str = "") -> dict[str, list[Any]]:
    """Every list of objects in a manifest, by its path (`.spec.evaluate.prompts`)."""
    found: dict[str, list[Any]] = {}
    if isinstance(value, dict):
        for key, child in value.items():
            found |= lists_of_objects(child, f"{path}.{key}")
    elif isinstance(value, list):
        if any(isinstance(item, dict) for item in value):
            found[path] = value
        for index, item in enumerate(value):
            found |= lists_of_objects(item, f"{path}[{index}]")
    return found


def served_at(obj: Any, path: str) -> Any:
    for step in re.findall(r"\.(\w+)|\[(\d+)\]", path):
        obj = obj[step[0]] if step[0] else obj[int(step[1])]
    return obj


WITH_LISTS_OF_OBJECTS = [path for path in EXAMPLES if path.name not in LOCAL_ONLY
                         and any(lists_of_objects(doc) for doc in yaml.safe_load_all(path.read_text()) if doc)]


def in_namespace(text: str, ns: str) -> str:
    """The manifest as written, moved to the test's namespace (examples/full.yaml names its own)."""
    doc = yaml.safe_load(text)
    doc["metadata"]["namespace"] = ns
    return yaml.safe_dump(doc, sort_keys=False)


def test_the_upgrade_covers_every_example_that_has_lists_of_objects() -> None:
    names = {path.name for path in WITH_LISTS_OF_OBJECTS}
    assert {"local-identity.yaml", "full.yaml", "cluster-s3-gpu.yaml"} <= names


@pytest.mark.parametrize("example", WITH_LISTS_OF_OBJECTS, ids=lambda path: path.name)
def test_server_side_apply_of_the_file_client_side_apply_applied_takes_it_over_without_a_conflict(
    cluster: Cluster, example: Path
) -> None:
    """The upgrade users make (`kubectl apply`, later `kubectl apply --server-side`, Argo CD or Flux): no conflict
    and no --force-conflicts. The CRD defaults nothing inside a list's items (lists are atomic), so the server stores
    each list exactly as applied and it still matches the last-applied annotation."""
    ns = namespace(cluster, f"upgrade-{example.stem}")
    text = in_namespace(example.read_text(), ns)
    written = yaml.safe_load(text)
    cluster.kubectl("apply", "-f", "-", stdin=text)
    served = cluster.kube.get("ftr", written["metadata"]["name"], ns)
    lists = lists_of_objects(written)
    assert lists and all(served_at(served, path) == items for path, items in lists.items())

    moved = cluster.kubectl.run("apply", "--server-side", "-f", "-", stdin=text)
    assert (moved.code, moved.err) == (0, "")
    assert moved.out == f"finetunerun.kubetune.dev/{written['metadata']['name']} serverside-applied\n"
    served = cluster.kube.get("ftr", written["metadata"]["name"], ns)
    assert all(served_at(served, path) == items for path, items in lists.items())
    [applied] = [e for e in served["metadata"]["managedFields"] if (e["manager"], e["operation"]) == ("kubectl", "Apply")]
    for path in lists:
        owned = applied["fieldsV1"]
        for step in path.removeprefix(".").split("."):
            owned = owned[f"f:{step}"]  # kubectl's server-side apply now owns the whole list


def test_server_side_apply_takes_over_lists_whose_items_leave_every_default_out(cluster: Cluster) -> None:
    """Tolerations without an operator, prompts without expectNotContains, webhooks with only their Secret: the
    models fill in those defaults when they read the spec, the server does not, so the upgrade finds nothing changed."""
    ns = namespace(cluster, "upgrade-item-defaults")
    spec: dict[str, Any] = {
        "resources": {"train": {"tolerations": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}},
        "evaluate": {"prompts": [{"prompt": "Who are you?", "expectContains": ["Nova"]}]},
        "notify": {"webhooks": [{"urlSecret": {"name": "hooks", "key": "url"}}]},
    }
    text = manifest("bare-items", **spec)
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=text)
    served = cluster.kube.get("ftr", "bare-items", ns)
    assert lists_of_objects(served["spec"]) == lists_of_objects(spec)  # stored as written: nothing added to items
    assert len(lists_of_objects(spec)) == 3
    out = cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", stdin=text)
    assert out == "finetunerun.kubetune.dev/bare-items serverside-applied\n"


def test_a_list_another_manager_changes_after_client_side_apply_still_conflicts(cluster: Cluster) -> None:
    """Only the upgrade of what client-side apply wrote is free: another field manager's different list, or
    kubectl's own apply after someone patched the list, conflicts as before."""
    ns = namespace(cluster, "list-conflict")
    path = REPO / "examples/local-identity.yaml"
    cluster.kubectl("apply", "-n", ns, "-f", str(path))
    edited = yaml.safe_load(path.read_text())
    edited["spec"]["evaluate"]["prompts"][0]["expectContains"] = ["someone else"]
    refused = cluster.kubectl.run("apply", "--server-side", "--field-manager=tuner", "-n", ns, "-f", "-",
                                  stdin=yaml.safe_dump(edited))
    assert refused.code == 1
    assert re.match(r'error: Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using '
                    r"kubetune.dev/v1alpha1 at [-0-9T:]+Z: .spec.evaluate.prompts\n", refused.err)

    patch = json.dumps({"spec": {"evaluate": {"prompts": edited["spec"]["evaluate"]["prompts"]}}})
    cluster.kubectl("patch", "ftr", "identity", "-n", ns, "--type=merge", "-p", patch)
    reverted = cluster.kubectl.run("apply", "--server-side", "-n", ns, "-f", str(path))
    assert reverted.code == 1
    assert re.match(r'error: Apply failed with 1 conflict: conflict with "kubectl-patch" using '
                    r"kubetune.dev/v1alpha1 at [-0-9T:]+Z: .spec.evaluate.prompts\n", reverted.err)
    forced = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-n", ns, "-f", str(path))
    assert forced == "finetunerun.kubetune.dev/identity serverside-applied\n"
    assert cluster.kube.get("ftr", "identity", ns)["spec"]["evaluate"]["prompts"] == (
        yaml.safe_load(path.read_text())["spec"]["evaluate"]["prompts"])


# -------------------------------------------------------------------------------------------- unknown fields


def test_a_manifest_with_an_unknown_field_is_refused_as_strict_field_validation_refuses_it(cluster: Cluster) -> None:
    ns = namespace(cluster, "strict")
    typo = manifest("typo", training={"epochz": 2})
    created = cluster.kubectl.run("apply", "-n", ns, "-f", "-", stdin=typo)
    assert created.code == 1
    assert created.err == (
        'Error from server (BadRequest): error when creating "STDIN": FineTuneRun in version "v1alpha1" cannot be '
        'handled as a FineTuneRun: strict decoding error: unknown field "spec.training.epochz"\n'
    )
    assert cluster.kube.find("ftr", "typo", ns) is None

    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=manifest("typo"))
    patched = cluster.kubectl.run("apply", "-n", ns, "-f", "-", stdin=typo)  # the merge patch of an existing run
    assert patched.code == 1
    assert "The request is invalid: patch: Invalid value: " in patched.err
    assert patched.err.rstrip().endswith('strict decoding error: unknown field "spec.training.epochz"')

    server_side = cluster.kubectl.run("apply", "--server-side", "-n", ns, "-f", "-", stdin=typo)
    assert server_side.code == 1
    assert server_side.err == (
        "Error from server: failed to create typed patch object (strict/typo; kubetune.dev/v1alpha1, "
        "Kind=FineTuneRun): .spec.training.epochz: field not declared in schema\n"
    )

    lenient = cluster.kubectl.run("apply", "--validate=false", "-n", ns, "-f", "-", stdin=typo)
    assert lenient.code == 0  # without validation the server prunes the field silently
    assert "epochz" not in cluster.kube.get("ftr", "typo", ns)["spec"]["training"]


def test_a_duplicate_key_reaches_the_server_as_its_last_value(cluster: Cluster) -> None:
    """kubectl resolves a repeated YAML key to its last value before sending: the server never sees the first."""
    ns = namespace(cluster, "duplicates")
    text = manifest("twice", suspend=True).replace("suspend: true", "suspend: true\n  suspend: false")
    assert text.count("suspend:") == 2
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=text)
    assert cluster.kube.get("ftr", "twice", ns)["spec"]["suspend"] is False


# ----------------------------------------------------------------------------------------------------- delete


def test_delete_removes_the_runs_of_a_file_and_waits_until_they_are_gone(cluster: Cluster) -> None:
    ns = namespace(cluster, "deleting")
    path = REPO / "examples/local-minimal.yaml"
    cluster.kubectl("apply", "-n", ns, "-f", str(path))
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    assert cluster.kubectl("delete", "-n", ns, "-f", str(path)) == f'finetunerun.kubetune.dev "{name}" deleted\n'
    gone = cluster.kubectl.run("get", "ftr", name, "-n", ns)
    assert gone.code == 1
    assert gone.err == f'Error from server (NotFound): finetuneruns.kubetune.dev "{name}" not found\n'
    assert cluster.kubectl("get", "ftr", "-n", ns) == ""


def test_a_server_side_dry_run_is_refused_rather_than_written(cluster: Cluster) -> None:
    """The emulator does not model dryRun (tests/kube/README.md): it must never persist what kubectl asked only to try."""
    ns = namespace(cluster, "dry-run")
    tried = cluster.kubectl.run("apply", "--dry-run=server", "-n", ns, "-f", "-", stdin=manifest("tried"))
    assert tried.code == 1
    assert "the emulator does not model dryRun" in tried.err
    assert cluster.kube.find("ftr", "tried", ns) is None
