"""A pvc:// base model: its claim is mounted read-only into the Jobs that read the model, and only those, in pod specs
a real API server admits."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from kubetune.operator.jobspec import DEFAULT_SCRATCH, HUB_SOURCES_SCRATCH, PVC_ROOT, build
from kubetune.sources import PVC_ROOT_ENV, SOURCES
from tests.kube.emulator import KubeEmulator
from tests.kube.errors import ApiError
from tests.unit.test_operator_jobspec import K8S_VERSIONS, SETTINGS, action, container, env, make_run, upstream

PVC_MODEL = {"baseModel": {"uri": "pvc://team.models/llm/tiny"}}
READERS = (SOURCES, "dataset", "train", "merge")


def job(stage: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    run = make_run(PVC_MODEL if spec is None else spec)
    return build(run, action(run, stage), SETTINGS, upstream())[-1]


def claim_volumes(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [vol for vol in manifest["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in vol]


@pytest.mark.parametrize("stage", READERS)
def test_the_claim_is_mounted_read_only_into_each_job_that_reads_the_model(stage: str) -> None:
    manifest = job(stage)
    [volume] = claim_volumes(manifest)
    assert volume["persistentVolumeClaim"] == {"claimName": "team.models", "readOnly": True}
    [mount] = [m for m in container(manifest)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": f"{PVC_ROOT}/team.models", "readOnly": True}
    assert env(manifest)[PVC_ROOT_ENV] == PVC_ROOT
    assert kubernetes_validate.validate(manifest, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("stage", ["convert", "evaluate"])
def test_stages_that_do_not_read_the_model_do_not_mount_the_claim(stage: str) -> None:
    manifest = job(stage)
    assert claim_volumes(manifest) == [] and PVC_ROOT_ENV not in env(manifest)


def test_a_model_from_elsewhere_mounts_no_claim() -> None:
    assert claim_volumes(job("train", {})) == []


def test_the_api_server_admits_the_jobs_and_refuses_one_whose_claim_has_no_name(kube: KubeEmulator) -> None:
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    for stage in READERS:
        created = kube.create(job(stage))
        assert claim_volumes(created)[0]["persistentVolumeClaim"]["readOnly"] is True
    broken = copy.deepcopy(job("train"))
    broken["metadata"]["name"] += "-x"
    claim_volumes(broken)[0]["persistentVolumeClaim"]["claimName"] = ""
    with pytest.raises(ApiError, match=r"persistentVolumeClaim\.claimName: Required value"):
        kube.create(broken)


def test_the_sources_job_of_an_hf_model_gets_room_to_download_it_once() -> None:
    hf, bundled = job(SOURCES, {"baseModel": {"uri": "hf://org/tiny"}}), job(SOURCES, {})
    scratch = [next(v["emptyDir"]["sizeLimit"] for v in m["spec"]["template"]["spec"]["volumes"] if v["name"] == "scratch")
               for m in (hf, bundled)]
    assert scratch == [HUB_SOURCES_SCRATCH, DEFAULT_SCRATCH[SOURCES]]


def test_a_pvc_dataset_is_mounted_into_the_sources_and_dataset_jobs_only() -> None:
    spec = {"dataset": {"uri": "pvc://datasets/identity"}}
    assert [[v["persistentVolumeClaim"]["claimName"] for v in claim_volumes(job(stage, spec))]
            for stage in (SOURCES, "dataset", "train")] == [["datasets"], ["datasets"], []]


def test_one_claim_holding_the_model_and_the_dataset_is_mounted_once(kube: KubeEmulator) -> None:
    spec = {**PVC_MODEL, "dataset": {"uri": "pvc://team.models/data/identity"}}
    manifest = job("dataset", spec)
    assert [v["persistentVolumeClaim"]["claimName"] for v in claim_volumes(manifest)] == ["team.models"]
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    kube.create(manifest)
    both = job("dataset", {**PVC_MODEL, "dataset": {"uri": "pvc://datasets/identity"}})
    assert [v["persistentVolumeClaim"]["claimName"] for v in claim_volumes(both)] == ["team.models", "datasets"]
    kube.create(both | {"metadata": {**both["metadata"], "name": both["metadata"]["name"] + "-both"}})
