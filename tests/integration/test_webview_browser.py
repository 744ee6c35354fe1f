"""The web view in a real browser (headless Chromium through Selenium): `kubetune ui` over a local run, and the
operator's view of a run in the Kubernetes emulator with SeaweedFS as its store. Screenshots go to the test's
tmp_path, never into the repository."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import kubernetes
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from kubetune.operator.rbac import allows
from kubetune.operator.web import ClusterRuns, serve_web
from tests.fixtures.s3 import S3Server
from tests.integration.operator_harness import OperatorBed, operator_bed
from tests.integration.webview_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    HOSTILE_ANSWER,
    HOSTILE_PROMPT,
    LOSSES,
    browser,
    kubetune_ui,
    prepare_local_run,
)
from tests.kube.emulator import KubeEmulator

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.kube"]

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them)",
)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("local-run")
    prepare_local_run(folder)
    return folder


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[WebDriver]:
    driver = browser(tmp_path / "chrome-profile", tmp_path / "downloads")
    try:
        yield driver
    finally:
        driver.quit()


def curve_segments(chrome: WebDriver) -> int:
    return (chrome.find_element(By.CSS_SELECTOR, "svg path.train-loss").get_attribute("d") or "").count("L")


def downloaded(folder: Path, name: str, timeout: float = 30.0) -> bytes:
    """The file once Chromium has finished writing it (it writes `<name>.crdownload` first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        target = folder / name
        if target.is_file() and not list(folder.glob("*.crdownload")):
            return target.read_bytes()
        time.sleep(0.1)
    raise TimeoutError(f"{name} was not downloaded into {folder}: {sorted(p.name for p in folder.glob('*'))}")


def manifest_entry(local_run: Path, stage: str, path: str) -> dict[str, object]:
    manifests = (local_run / ".kubetune" / "store" / "default" / "webview-demo" / stage).glob("*/manifest.json")
    (manifest,) = [json.loads(m.read_text()) for m in manifests]
    (entry,) = [f for f in manifest["files"] if f["path"] == path]
    return dict(entry)


def test_kubetune_ui_lists_the_run_and_its_page_shows_stages_loss_artifacts_answers_and_events(
        local_run: Path, chrome: WebDriver, tmp_path: Path) -> None:
    with kubetune_ui(local_run) as url:
        chrome.get(url)
        chrome.save_screenshot(str(tmp_path / "runs.png"))
        row = chrome.find_element(By.XPATH, "//table/tbody/tr[td/a[text()='webview-demo']]")
        assert "Succeeded" in row.text
        row.find_element(By.LINK_TEXT, "webview-demo").click()

        assert chrome.find_element(By.TAG_NAME, "h1").text.startswith("webview-demo")
        stages = [[cell.text for cell in tr.find_elements(By.TAG_NAME, "td")[:2]]
                  for tr in chrome.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=stages] tbody tr")]
        assert stages == [[name, "Cached"] for name in ("dataset", "train", "merge", "convert", "evaluate")] + [
            ["publish", "Skipped"]]  # the run publishes nothing

        assert curve_segments(chrome) == len(LOSSES) - 1
        description = chrome.find_element(By.ID, "loss-desc").get_attribute("textContent") or ""
        assert f"{len(LOSSES)} points from step 1 to {len(LOSSES)}" in description

        answers = chrome.find_element(By.CSS_SELECTOR, "section[aria-labelledby=gate]")
        assert HOSTILE_PROMPT in answers.text and HOSTILE_ANSWER in answers.text
        assert chrome.title == "webview-demo · kubetune"  # the hostile text ran nothing
        assert chrome.find_elements(By.CSS_SELECTOR, "main img, main script") == []

        events = chrome.find_element(By.CSS_SELECTOR, "section[aria-labelledby=events]").text
        assert "StageCached" in events and "FineTuneRun succeeded" in events
        chrome.save_screenshot(str(tmp_path / "run.png"))

        entry = manifest_entry(local_run, "convert", "model-q8_0.gguf")
        link = chrome.find_element(By.LINK_TEXT, "model-q8_0.gguf")
        row_text = link.find_element(By.XPATH, "./ancestor::tr").text
        assert str(entry["sha256"]) in row_text and "300.0 KB" in row_text
        link.click()
        data = downloaded(tmp_path / "downloads", "model-q8_0.gguf")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])


def test_the_page_works_without_javascript(local_run: Path, chrome: WebDriver) -> None:
    with kubetune_ui(local_run) as url:
        chrome.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
        chrome.get(f"{url}/runs/default/webview-demo")
        assert len(chrome.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=artifacts] tbody tr")) >= 5
        assert curve_segments(chrome) == len(LOSSES) - 1


def write_training(store: Path, folder: str, steps: int) -> None:
    """What a training train job leaves in its folder: a checkpoint's trainer_state.json and progress.json."""
    root = store / "default" / "live-demo" / "train" / folder
    root.mkdir(parents=True, exist_ok=True)
    state = {"metrics": [{"step": s, "loss": 4.0 / s} for s in range(1, steps)]}
    checkpoint = root / "checkpoints" / f"checkpoint-{steps - 1:08d}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (checkpoint / "manifest.json").write_text("{}")  # only its presence marks the checkpoint complete here
    progress = {"step": steps, "totalSteps": 40, "loss": 4.0 / steps, "updatedAt": f"2026-12-06T08:{steps:02d}:00Z"}
    (root / "progress.json").write_text(json.dumps(progress))


def test_an_active_runs_page_redraws_its_loss_curve_in_place_as_training_goes_on(
        local_run: Path, chrome: WebDriver) -> None:
    state = local_run / ".kubetune"
    document = json.loads((state / "runs" / "default" / "webview-demo" / "status.json").read_text())
    document["metadata"]["name"] = "live-demo"
    document["status"] = {"phase": "Running", "currentStage": "train", "progressText": "train",
                          "stages": {"train": {"phase": "Running", "inputKey": "f" * 64}}}
    (state / "runs" / "default" / "live-demo").mkdir()
    (state / "runs" / "default" / "live-demo" / "status.json").write_text(json.dumps(document))
    write_training(state / "store", "0123456789abcdef", steps=4)
    with kubetune_ui(local_run) as url:
        chrome.get(f"{url}/runs/default/live-demo")
        assert curve_segments(chrome) == 3
        chrome.execute_script("window.sameDocument = true")
        write_training(state / "store", "0123456789abcdef", steps=9)
        deadline = time.monotonic() + 30
        while curve_segments(chrome) != 8:
            assert time.monotonic() < deadline, "the curve was not redrawn"
            time.sleep(0.5)
        assert chrome.execute_script("return window.sameDocument") is True  # updated in place, not reloaded
        assert "9 / 40" in chrome.find_element(By.CSS_SELECTOR, "section[aria-labelledby=training]").text


# --- the operator's view --------------------------------------------------------------------------------------------


@pytest.fixture
def bed(kube: KubeEmulator, tmp_path: Path, s3_bucket: str, s3_server: S3Server) -> Iterator[OperatorBed]:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, s3_server.endpoint) as bed:
        yield bed


@contextmanager
def operator_view(bed: OperatorBed) -> Iterator[str]:
    """The operator's web view as __main__ starts it (serve_web), on a free loopback port."""
    server = serve_web(replace(bed.settings, web_port=0), kubernetes.client.Configuration(host=bed.kube.url),
                       host="127.0.0.1")
    try:
        yield server.url
    finally:
        server.stop()
        assert isinstance(server.source, ClusterRuns)
        server.source.close()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_operator_serves_the_clusters_runs_with_their_events_and_store_files_reading_only(
        bed: OperatorBed, chrome: WebDriver, tmp_path: Path) -> None:
    with bed.operator():
        bed.create_run("viewed")
        run = bed.wait_phase("viewed", "Succeeded", timeout=120)
    bed.kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "viewed.hostile", "namespace": "default"},
                     "involvedObject": {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "name": "viewed",
                                        "namespace": "default", "uid": run["metadata"]["uid"]},
                     "type": "Warning", "reason": "Note", "message": HOSTILE_ANSWER,
                     "firstTimestamp": "2026-12-06T09:00:00Z", "lastTimestamp": "2026-12-06T09:00:00Z", "count": 1})
    bed.kube.faults.reset_counters()
    with operator_view(bed) as url:
        chrome.get(url)
        chrome.find_element(By.LINK_TEXT, "viewed").click()
        stages = [[cell.text for cell in tr.find_elements(By.TAG_NAME, "td")[:2]]
                  for tr in chrome.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=stages] tbody tr")]
        assert stages == [[name, "Succeeded"] for name in ("dataset", "train", "merge", "convert", "evaluate")] + [
            ["publish", "Skipped"]]  # the run publishes nothing
        events = chrome.find_element(By.CSS_SELECTOR, "section[aria-labelledby=events]").text
        assert "StageSucceeded" in events and HOSTILE_ANSWER in events
        assert chrome.find_elements(By.CSS_SELECTOR, "main img, main script") == []
        chrome.save_screenshot(str(tmp_path / "operator-run.png"))

        convert = run["status"]["stages"]["convert"]
        (gguf,) = [o for o in convert["outputs"] if o["name"] == "model-q8_0.gguf"]
        chrome.find_element(By.LINK_TEXT, "model-q8_0.gguf").click()
        data = downloaded(tmp_path / "downloads", "model-q8_0.gguf")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (gguf["size"], gguf["sha256"])

    calls = {call for call in bed.kube.faults.request_counts() if call[1] != "discovery"}
    assert calls == {("list", "finetuneruns"), ("get", "finetuneruns"), ("list", "events")}
    assert all(allows(verb, "" if resource == "events" else "kubetune.dev", resource) for verb, resource in calls)
