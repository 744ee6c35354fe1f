"""The emulator keeps the Kubernetes API semantics that kopf and the operator rely on (over real HTTP)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.kube import kube  # noqa: F401 - the fixture, until tests/conftest.py registers the plugin
from tests.kube.emulator import KubeEmulator
from tests.kube.http import KubeHttp
from tests.kube.samples import WIDGETS, widget, widget_crd

WIDGETS_URL = "/apis/example.dev/v1/namespaces/default/widgets"
CM_URL = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def api(kube: KubeEmulator) -> Iterator[KubeHttp]:  # noqa: F811
    kube.apply_crd(widget_crd())
    yield KubeHttp(kube.url)


def configmap(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}


# ------------------------------------------------------------------------------------------------------- discovery

def test_discovery_lists_builtin_groups_and_crd_versions_with_status_subresource(api: KubeHttp) -> None:
    groups = {group["name"]: group for group in api.get("/apis").body["groups"]}
    assert {"batch", "events.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io", "example.dev"} <= set(groups)
    assert groups["example.dev"]["preferredVersion"]["version"] == "v1"
    resources = {r["name"]: r for r in api.get("/apis/example.dev/v1").body["resources"]}
    assert resources["widgets"]["kind"] == "Widget" and resources["widgets"]["namespaced"] is True
    assert resources["widgets"]["shortNames"] == ["wg"] and "watch" in resources["widgets"]["verbs"]
    assert resources["widgets/status"]["verbs"] == ["get", "patch", "update"]
    core = {r["name"] for r in api.get("/api/v1").body["resources"]}
    assert {"namespaces", "pods", "configmaps", "secrets", "services", "events", "pods/status"} <= core
    assert api.get("/api").body["versions"] == ["v1"]
    assert api.get("/version").body["major"] == "1"
    assert api.get("/apis/unknown.dev/v1").status == 404


def test_deleting_a_crd_removes_it_from_discovery_with_its_objects(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    api.post(WIDGETS_URL, widget("w1"))
    assert api.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{WIDGETS}").status == 200
    assert api.get("/apis/example.dev/v1").status == 404
    assert api.get(WIDGETS_URL).status == 404
    kube.apply_crd(widget_crd())
    assert api.get(WIDGETS_URL).body["items"] == []


def test_a_crd_whose_name_does_not_match_its_names_is_invalid(api: KubeHttp) -> None:
    crd = widget_crd()
    crd["metadata"]["name"] = "gadgets.example.dev"
    reply = api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert (reply.status, reply.body["reason"]) == (422, "Invalid")


# ---------------------------------------------------------------------------------------------------------- create

def test_create_sets_uid_resource_version_generation_and_creation_timestamp(api: KubeHttp) -> None:
    reply = api.post(WIDGETS_URL, widget("w1"))
    meta = reply.body["metadata"]
    assert reply.status == 201
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert meta["resourceVersion"].isdigit() and meta["generation"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    second = api.post(WIDGETS_URL, widget("w2")).body["metadata"]
    assert int(second["resourceVersion"]) > int(meta["resourceVersion"]) and second["uid"] != meta["uid"]


def test_generate_name_gets_a_random_suffix(api: KubeHttp) -> None:
    reply = api.post(CM_URL, {"metadata": {"generateName": "cfg-"}})
    assert re.fullmatch(r"cfg-[a-z0-9]{5}", reply.body["metadata"]["name"])


@pytest.mark.parametrize(("body", "status", "reason"), [
    ({"metadata": {}}, 422, "Invalid"),
    ({"metadata": {"name": "Not_Valid"}}, 422, "Invalid"),
    ({"metadata": {"name": "x", "namespace": "other"}}, 400, "BadRequest"),
    ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}, 400, "BadRequest"),
    ({"metadata": {"name": "x", "labels": {"a": 1}}}, 422, "Invalid"),
])
def test_create_rejects_malformed_objects_with_status_objects(api: KubeHttp, body: dict, status: int, reason: str) -> None:
    reply = api.post(CM_URL, body)
    assert (reply.status, reply.body["kind"], reply.body["reason"], reply.body["code"]) == (
        status, "Status", reason, status)


def test_create_of_an_existing_name_is_already_exists_and_unknown_namespace_is_not_found(api: KubeHttp) -> None:
    assert api.post(CM_URL, configmap("a")).status == 201
    duplicate = api.post(CM_URL, configmap("a"))
    assert (duplicate.status, duplicate.body["reason"]) == (409, "AlreadyExists")
    missing = api.post("/api/v1/namespaces/nowhere/configmaps", configmap("a"))
    assert (missing.status, missing.body["reason"]) == (404, "NotFound")


def test_crd_schema_defaults_prunes_and_validates_including_cel(api: KubeHttp) -> None:
    created = api.post(WIDGETS_URL, widget("w1", unknown="dropped", free={"kept": True})).body
    assert created["spec"] == {"size": 3, "min": 0, "max": 10, "free": {"kept": True}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"size": 0}, "greater than or equal to 1"), ({"color": "green"}, "Unsupported value"),
        ({"size": "big"}, "must be of type integer"), ({"min": 20}, "min must not exceed max"),
    ]
    for spec, fragment in cases:
        reply = api.post(WIDGETS_URL, widget("bad", **spec))
        assert reply.status == 422 and fragment in reply.body["message"], reply.body


def test_cel_rules_ratchet_an_unchanged_value_passes_a_rule_tightened_since(kube: KubeEmulator,  # noqa: F811
                                                                              api: KubeHttp) -> None:
    api.post(WIDGETS_URL, widget("w1", min=5, max=10))
    tightened = widget_crd()
    spec_schema = tightened["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["x-kubernetes-validations"] = [{"rule": "self.max - self.min >= 8", "message": "range too narrow"}]
    kube.apply_crd(tightened)
    # The stored spec breaks the new rule, but an update that leaves it as it is goes through (Kubernetes 1.33+).
    assert api.patch(f"{WIDGETS_URL}/w1/status", {"status": {"phase": "Done"}}).status == 200
    assert api.patch(f"{WIDGETS_URL}/w1", {"metadata": {"labels": {"a": "b"}}}).status == 200
    changed = api.patch(f"{WIDGETS_URL}/w1", {"spec": {"min": 4}})
    assert changed.status == 422 and "range too narrow" in changed.body["message"], changed.body
    assert api.patch(f"{WIDGETS_URL}/w1", {"spec": {"min": 1}}).status == 200


def test_set_and_map_lists_refuse_a_repeated_item_and_name_its_second_appearance(kube: KubeEmulator,  # noqa: F811
                                                                                    api: KubeHttp) -> None:
    crd = widget_crd()
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["tags"] = {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}
    spec_schema["properties"]["ports"] = {
        "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "required": ["name"],
                  "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}},
    }
    kube.apply_crd(crd)
    tags = api.post(WIDGETS_URL, widget("tags", tags=["a", "b", "a", "a", "b"]))
    assert tags.status == 422, tags.body
    assert [c["field"] for c in tags.body["details"]["causes"]] == ["spec.tags[2]", "spec.tags[4]"]
    assert tags.body["details"]["causes"][0]["message"] == 'Duplicate value: "a"'
    ports = api.post(WIDGETS_URL, widget("ports", ports=[{"name": "http", "port": 80}, {"name": "http", "port": 81}]))
    assert ports.status == 422, ports.body
    assert 'spec.ports[1]: Duplicate value: {"name":"http"}' in ports.body["message"]
    assert api.post(WIDGETS_URL, widget("ok", tags=["a", "b"], ports=[{"name": "a"}, {"name": "b"}])).status == 201


def test_list_uniqueness_ratchets_an_object_stored_with_duplicates_stays_writable(kube: KubeEmulator,  # noqa: F811
                                                                                   api: KubeHttp) -> None:
    api.post(WIDGETS_URL, widget("w1", free={"x": 1}))
    api.patch(f"{WIDGETS_URL}/w1/status", {"status": {"seen": ["a", "a"]}})
    crd = widget_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"] = {
        "type": "object", "properties": {"seen": {"type": "array", "items": {"type": "string"},
                                                  "x-kubernetes-list-type": "set"}}}
    kube.apply_crd(crd)
    # Stored before the list became a set: writes that keep (or even add to) the duplicates go through, as upstream.
    assert api.patch(f"{WIDGETS_URL}/w1", {"metadata": {"labels": {"a": "b"}}}).status == 200
    assert api.patch(f"{WIDGETS_URL}/w1/status", {"status": {"seen": ["a", "a", "b", "b"]}}).status == 200
    assert api.patch(f"{WIDGETS_URL}/w1/status", {"status": {"seen": ["a", "b"]}}).status == 200
    again = api.patch(f"{WIDGETS_URL}/w1/status", {"status": {"seen": ["b", "b"]}})
    assert again.status == 422 and 'status.seen[1]: Duplicate value: "b"' in again.body["message"], again.body


# --------------------------------------------------------------------------------------------- read, list, selectors

def test_get_of_a_missing_object_is_a_not_found_status(api: KubeHttp) -> None:
    reply = api.get(f"{WIDGETS_URL}/nope")
    assert reply.status == 404
    assert reply.body["message"] == 'widgets.example.dev "nope" not found'
    assert reply.body["details"] == {"name": "nope", "group": "example.dev", "kind": "widgets"}


@pytest.mark.parametrize(("selector", "expected"), [
    ("app=a", ["one", "two"]),
    ("app=a,tier=db", ["two"]),
    ("app!=a", ["three"]),
    ("tier", ["two", "three"]),
    ("!tier", ["one"]),
    ("tier in (db,web)", ["two", "three"]),
    ("app notin (a)", ["three"]),
])
def test_list_filters_by_label_selector(api: KubeHttp, selector: str, expected: list[str]) -> None:
    api.post(CM_URL, configmap("one", app="a"))
    api.post(CM_URL, configmap("two", app="a", tier="db"))
    api.post(CM_URL, configmap("three", app="b", tier="web"))
    items = api.get(CM_URL, labelSelector=selector).body["items"]
    assert sorted(item["metadata"]["name"] for item in items) == sorted(expected)


def test_list_filters_by_field_selector_and_spans_namespaces_cluster_wide(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    api.post(CM_URL, configmap("a"))
    api.post("/api/v1/namespaces/team/configmaps", configmap("a"))
    api.post(CM_URL, configmap("b"))
    by_name = api.get(CM_URL, fieldSelector="metadata.name=a").body["items"]
    assert [item["metadata"]["name"] for item in by_name] == ["a"]
    everywhere = api.get("/api/v1/configmaps", fieldSelector="metadata.name=a").body["items"]
    assert [item["metadata"]["namespace"] for item in everywhere] == ["default", "team"]


def test_list_is_chunked_with_limit_and_continue(api: KubeHttp) -> None:
    for index in range(5):
        api.post(CM_URL, configmap(f"cm-{index}"))
    names, token, rvs = [], None, set()
    while True:
        page = api.get(CM_URL, limit=2, **({"continue": token} if token else {})).body
        names += [item["metadata"]["name"] for item in page["items"]]
        rvs.add(page["metadata"]["resourceVersion"])
        token = page["metadata"].get("continue")
        if not token:
            break
    assert names == [f"cm-{index}" for index in range(5)] and len(rvs) == 1


# ---------------------------------------------------------------------------------------------------------- update

def test_put_with_a_stale_resource_version_is_a_conflict(api: KubeHttp) -> None:
    first = api.post(CM_URL, configmap("a")).body
    updated = api.put(f"{CM_URL}/a", {**first, "data": {"k": "2"}})
    assert updated.status == 200
    assert int(updated.body["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    stale = api.put(f"{CM_URL}/a", {**first, "data": {"k": "3"}})
    assert (stale.status, stale.body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in stale.body["message"]


def test_generation_bumps_on_spec_changes_only(api: KubeHttp) -> None:
    api.post(WIDGETS_URL, widget("w1"))
    after_spec = api.patch(f"{WIDGETS_URL}/w1", {"spec": {"size": 5}}).body
    after_labels = api.patch(f"{WIDGETS_URL}/w1", {"metadata": {"labels": {"x": "y"}}}).body
    after_status = api.patch(f"{WIDGETS_URL}/w1/status", {"status": {"phase": "Running"}}).body
    assert [after_spec["metadata"]["generation"], after_labels["metadata"]["generation"],
            after_status["metadata"]["generation"]] == [2, 2, 2]
    assert after_status["status"] == {"phase": "Running"}


def test_status_subresource_separates_status_from_the_rest(api: KubeHttp) -> None:
    api.post(WIDGETS_URL, {**widget("w1"), "status": {"phase": "ignored on create"}})
    assert "status" not in api.get(f"{WIDGETS_URL}/w1").body
    main = api.patch(f"{WIDGETS_URL}/w1", {"spec": {"size": 7}, "status": {"phase": "ignored"}}).body
    assert main["spec"]["size"] == 7 and "status" not in main
    status = api.patch(f"{WIDGETS_URL}/w1/status", {"spec": {"size": 9}, "status": {"phase": "Done"}}).body
    assert status["spec"]["size"] == 7 and status["status"] == {"phase": "Done"}
    current = api.get(f"{WIDGETS_URL}/w1/status").body
    replaced = api.put(f"{WIDGETS_URL}/w1/status", {**current, "status": {"phase": "Again"}}).body
    assert replaced["status"] == {"phase": "Again"} and replaced["spec"]["size"] == 7


def test_a_no_op_patch_keeps_the_resource_version(api: KubeHttp) -> None:
    created = api.post(WIDGETS_URL, widget("w1", size=4)).body
    same = api.patch(f"{WIDGETS_URL}/w1", {"spec": {"size": 4}}).body
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_json_patch_applies_operations_and_fails_a_false_test(api: KubeHttp) -> None:
    api.post(CM_URL, configmap("a"))
    operations = [{"op": "add", "path": "/data/new", "value": "1"}, {"op": "replace", "path": "/data/k", "value": "2"},
                  {"op": "add", "path": "/metadata/labels/a~1b", "value": "c"}]
    patched = api.patch(f"{CM_URL}/a", operations, "json").body
    assert patched["data"] == {"k": "2", "new": "1"} and patched["metadata"]["labels"] == {"a/b": "c"}
    failed = api.patch(f"{CM_URL}/a", [{"op": "test", "path": "/data/k", "value": "nope"}], "json")
    assert failed.status == 422


def test_strategic_merge_patch_merges_named_lists_and_is_refused_for_custom_resources(api: KubeHttp) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}
    api.post("/api/v1/namespaces/default/pods", pod)
    patch = {"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}]}}
    patched = api.patch("/api/v1/namespaces/default/pods/p", patch, "strategic").body
    assert patched["spec"]["containers"] == [{"name": "b", "image": "z"}]
    api.post(WIDGETS_URL, widget("w1"))
    assert api.patch(f"{WIDGETS_URL}/w1", {"spec": {"size": 2}}, "strategic").status == 415


def test_merge_patch_with_a_stale_resource_version_is_a_conflict(api: KubeHttp) -> None:
    created = api.post(CM_URL, configmap("a")).body
    api.patch(f"{CM_URL}/a", {"data": {"k": "2"}})
    stale = api.patch(f"{CM_URL}/a", {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}})
    assert stale.status == 409


def test_job_pod_template_is_immutable_and_restart_policy_is_required(api: KubeHttp) -> None:
    jobs = "/apis/batch/v1/namespaces/default/jobs"
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "command": ["true"]}]}}
    created = api.post(jobs, {"metadata": {"name": "j"}, "spec": {"template": template}}).body
    assert created["spec"]["backoffLimit"] == 6 and created["spec"]["suspend"] is False
    assert created["spec"]["template"]["metadata"]["labels"]["job-name"] == "j"
    changed = api.patch(f"{jobs}/j", {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "other"}]}}}})
    assert changed.status == 422 and "immutable" in changed.body["message"]
    assert api.patch(f"{jobs}/j", {"spec": {"suspend": True}}).status == 200
    no_policy = {"spec": {"containers": [{"name": "c", "image": "i"}]}}
    assert api.post(jobs, {"metadata": {"name": "k"}, "spec": {"template": no_policy}}).status == 422


def test_secret_string_data_is_stored_base64_encoded(kube: KubeEmulator) -> None:  # noqa: F811
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"token": "hunter2"}})
    secret = kube.get("secrets", "s")
    assert secret["data"] == {"token": "aHVudGVyMg=="} and "stringData" not in secret


# ---------------------------------------------------------------------------------------------------------- delete

def test_finalizers_hold_a_deleted_object_until_they_are_removed(api: KubeHttp) -> None:
    api.post(WIDGETS_URL, {**widget("w1"), "metadata": {"name": "w1", "finalizers": ["example.dev/cleanup"]}})
    deleting = api.delete(f"{WIDGETS_URL}/w1").body
    assert deleting["metadata"]["deletionTimestamp"]
    assert api.get(f"{WIDGETS_URL}/w1").status == 200
    refused = api.patch(f"{WIDGETS_URL}/w1", {"metadata": {"finalizers": ["example.dev/cleanup", "more"]}})
    assert refused.status == 422
    assert api.patch(f"{WIDGETS_URL}/w1", {"metadata": {"finalizers": []}}).status == 200
    assert api.get(f"{WIDGETS_URL}/w1").status == 404


def test_delete_preconditions_and_missing_objects(api: KubeHttp) -> None:
    api.post(CM_URL, configmap("a"))
    wrong = api.delete(f"{CM_URL}/a", {"preconditions": {"uid": "not-the-uid"}})
    assert wrong.status == 409
    assert api.delete(f"{CM_URL}/a").status == 200
    assert api.delete(f"{CM_URL}/a").status == 404


def owned_configmap(name: str, owner: dict) -> dict:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    return {"metadata": {"name": name, "ownerReferences": [ref]}}


@pytest.mark.parametrize(("policy", "dependents_left"), [("Background", []), ("Foreground", []), ("Orphan", ["child"])])
def test_deleting_an_owner_cascades_to_dependents_per_propagation_policy(
    api: KubeHttp, policy: str, dependents_left: list[str],
) -> None:
    owner = api.post(WIDGETS_URL, widget("parent")).body
    api.post(CM_URL, owned_configmap("child", owner))
    grandchild_owner = api.get(f"{CM_URL}/child").body
    api.post(CM_URL, owned_configmap("grandchild", grandchild_owner))
    assert api.delete(f"{WIDGETS_URL}/parent", propagationPolicy=policy).status == 200
    assert api.get(f"{WIDGETS_URL}/parent").status == 404
    left = [item["metadata"]["name"] for item in api.get(CM_URL).body["items"]]
    assert left == sorted(dependents_left + (["grandchild"] if policy == "Orphan" else []))
    if policy == "Orphan":
        assert "ownerReferences" not in api.get(f"{CM_URL}/child").body["metadata"]


def test_foreground_deletion_waits_for_dependents_with_finalizers(api: KubeHttp) -> None:
    owner = api.post(WIDGETS_URL, widget("parent")).body
    child = owned_configmap("child", owner)
    child["metadata"]["finalizers"] = ["example.dev/hold"]
    api.post(CM_URL, child)
    api.delete(f"{WIDGETS_URL}/parent", propagationPolicy="Foreground")
    parent = api.get(f"{WIDGETS_URL}/parent").body
    assert parent["metadata"]["finalizers"] == ["foregroundDeletion"] and parent["metadata"]["deletionTimestamp"]
    api.patch(f"{CM_URL}/child", {"metadata": {"finalizers": None}})
    assert api.get(f"{CM_URL}/child").status == 404
    assert api.get(f"{WIDGETS_URL}/parent").status == 404


def test_an_object_created_for_an_owner_that_is_gone_is_garbage_collected(api: KubeHttp) -> None:
    owner = api.post(WIDGETS_URL, widget("parent")).body
    api.delete(f"{WIDGETS_URL}/parent")
    assert api.post(CM_URL, owned_configmap("late", owner)).status == 201
    assert api.get(f"{CM_URL}/late").status == 404


def test_deleting_a_namespace_deletes_everything_in_it(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    api.post("/api/v1/namespaces/team/configmaps", configmap("a"))
    api.post("/apis/example.dev/v1/namespaces/team/widgets", widget("w", namespace="team"))
    assert api.delete("/api/v1/namespaces/team").status == 200
    assert api.get("/api/v1/namespaces/team").status == 404
    assert api.get("/api/v1/namespaces/team/configmaps").body["items"] == []


# ------------------------------------------------------------------------------------------------------ Python API

def test_python_api_reads_and_writes_the_same_state(kube: KubeEmulator) -> None:  # noqa: F811
    kube.apply_crd(widget_crd())
    kube.create(widget("w1"))
    patched = kube.patch_status("wg", "w1", {"phase": "Running"})
    assert patched["status"] == {"phase": "Running"}
    assert [item["metadata"]["name"] for item in kube.list("widgets.example.dev")] == ["w1"]
    kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "w1.1"}, "reason": "Created",
                 "involvedObject": {"kind": "Widget", "name": "w1"}})
    kube.create({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "w1.2"}, "reason": "Done",
                 "eventTime": "2024-01-01T00:00:00.000000Z", "regarding": {"kind": "Widget", "name": "w1"}})
    assert [event["reason"] for event in kube.events(involved_name="w1")] == ["Created", "Done"]
    kube.delete("wg", "w1")
    assert kube.wait_for("wg", "w1", lambda obj: obj is None, timeout=1) is None


def test_the_generated_finetunerun_crd_rules_run_server_side_with_metadata_name(kube: KubeEmulator) -> None:  # noqa: F811
    from pathlib import Path

    from tests.kube.errors import ApiError

    kube.apply_crd_file(Path(__file__).resolve().parents[2] / "crds" / "kubetune.dev_finetuneruns.yaml")
    run = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "spec": {}}
    created = kube.create({**run, "metadata": {"name": "ok", "namespace": "default"}})
    assert created["spec"]["training"]["lora"]["r"] == 16  # CRD defaults applied
    with pytest.raises(ApiError, match="at most 40 characters"):
        kube.create({**run, "metadata": {"name": "n" * 41, "namespace": "default"}})
    with pytest.raises(ApiError, match="only to method qlora"):
        kube.create({**run, "metadata": {"name": "lora", "namespace": "default"},
                     "spec": {"training": {"method": "lora", "quantization": {"type": "nf4"}}}})
    # status.conditions is a map keyed by type (kubebuilder's listType=map): one condition of each type.
    ready = {"type": "Ready", "status": "False", "reason": "Running", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    with pytest.raises(ApiError, match=r'status.conditions\[1\]: Duplicate value: \{"type":"Ready"\}'):
        kube.patch_status("ftr", "ok", {"conditions": [ready, {**ready, "status": "True"}]})
    kube.patch_status("ftr", "ok", {"conditions": [ready, {**ready, "type": "Progressing"}]})
