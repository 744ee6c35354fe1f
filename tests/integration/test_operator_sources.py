"""The operator resolves what the stages read with a Job of its own before the first stage, reuses that resolution
while the sources are unchanged, and resolves again on `kubetune.dev/refresh`. Real kopf against the Kubernetes
emulator; the sources Job is the real `kubetune.jobs.sources` code; SeaweedFS is the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.api.types import STAGES
from kubetune.sources import SOURCES
from tests.fixtures.s3 import S3Server
from tests.integration.operator_harness import Obj, OperatorBed, operator_bed
from tests.kube.emulator import KubeEmulator

RUN_STAGES = tuple(s for s in STAGES if s != "publish")  # the runs here publish nothing (spec.publish is empty)

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.kube"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def bed(kube: KubeEmulator, tmp_path: Path, s3_bucket: str, s3_server: S3Server) -> Iterator[OperatorBed]:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, s3_server.endpoint) as bed:
        yield bed


def jobs_by_stage(bed: OperatorBed, run: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for job in bed.jobs(run):
        found.setdefault(job["metadata"]["labels"]["kubetune.dev/stage"], []).append(job["metadata"]["name"])
    return {stage: sorted(names) for stage, names in found.items()}


def settled(run: Obj, generation: int, refresh: str | None = None) -> bool:
    status = run.get("status") or {}
    return (status.get("phase") == "Succeeded" and status.get("observedGeneration") == generation
            and (status.get("sources") or {}).get("refresh") == refresh)


def test_a_sources_job_resolves_before_the_stages_and_only_a_source_edit_or_a_refresh_resolves_again(
        bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("addressed")
        first = bed.wait_run("addressed", lambda run: settled(run, 1), timeout=120)
        sources = first["status"]["sources"]
        assert sources["phase"] == "Succeeded" and sources["jobName"].startswith("addressed-sources-")
        assert sources["dataset"]["uri"] == "bundled" and len(sources["dataset"]["digest"]) == 64
        assert sources["baseModel"]["uri"] == "bundled://smollm2-135m-instruct"
        assert len(sources["template"]["digest"]) == 64
        assert {stage: len(names) for stage, names in jobs_by_stage(bed, "addressed").items()} == {
            SOURCES: 1, **dict.fromkeys(RUN_STAGES, 1)}

        # An unchanged re-apply (kubectl apply, a GitOps sync) changes nothing, resolves nothing, runs nothing.
        before = jobs_by_stage(bed, "addressed")
        bed.kube.patch("ftr", "addressed", {"spec": first["spec"]})
        # An edit of a field no source depends on keeps the resolution: only the affected stage runs.
        bed.edit_spec("addressed", lambda spec: spec["evaluate"].update(minPassRate=0.5))
        edited = bed.wait_run("addressed", lambda run: settled(run, 2), timeout=120)
        after = jobs_by_stage(bed, "addressed")
        assert after[SOURCES] == before[SOURCES]
        assert {stage for stage in RUN_STAGES if after[stage] != before[stage]} == {"evaluate"}
        assert edited["status"]["sources"]["inputKey"] == sources["inputKey"]

        # Content may change behind an unchanged URI: the refresh annotation resolves again. Unchanged content
        # gives the same keys, so no stage runs again.
        bed.kube.patch("ftr", "addressed", {"metadata": {"annotations": {"kubetune.dev/refresh": "1"}}})
        refreshed = bed.wait_run("addressed", lambda run: settled(run, 2, "1"), timeout=120)
        final = jobs_by_stage(bed, "addressed")
        assert len(final[SOURCES]) == 2
        assert all(final[stage] == after[stage] for stage in RUN_STAGES)
        assert refreshed["status"]["sources"]["inputKey"] != sources["inputKey"]
        assert refreshed["status"]["sources"]["dataset"] == sources["dataset"]
        for stage in RUN_STAGES:
            assert refreshed["status"]["stages"][stage]["inputKey"] == edited["status"]["stages"][stage]["inputKey"]


def test_a_sources_job_that_cannot_resolve_fails_the_run_with_the_field_and_no_stage_runs(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("unresolvable", dataset={"uri": "/nonexistent/tree"})
        failed = bed.wait_phase("unresolvable", "Failed", timeout=90)
    status = failed["status"]
    assert status["sources"]["phase"] == "Failed"
    assert "spec.dataset.uri: /nonexistent/tree is not a folder" in status["message"]
    assert set(jobs_by_stage(bed, "unresolvable")) == {SOURCES}
