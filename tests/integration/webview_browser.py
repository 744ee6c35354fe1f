"""Headless Chromium through Selenium for the web view's tests, and a local run's state made by the real local
executor: `kubetune run` plans every stage and writes the status and events; each stage's output is published
(manifest last, as the jobs do) at the key the planner asked for, so the next `kubetune run` finds it and goes on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from kubetune.api.types import STAGES
from kubetune.api.validate import load_runs
from kubetune.digests import DigestCache
from kubetune.jobs.basemodel import default_cache_dir
from kubetune.jobs.plots import write_metrics_csv
from kubetune.sources import resolve_sources
from kubetune.stages import stage_ref
from kubetune.store import LocalStore, content_digest, open_store, publish

RUN_STAGES = tuple(s for s in STAGES if s != "publish")  # the runs here publish nothing (spec.publish is empty)

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1280,1800")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
HOSTILE_PROMPT = "<script>document.title='pwned'</script>Who are you?"
HOSTILE_ANSWER = "<img src=x onerror=\"document.title='pwned'\">I am Nova & I <b>mean</b> it"
LOSSES = [3.9, 3.4, 2.9, 2.2, 1.7, 1.3, 1.1, 0.95]

MANIFEST = f"""apiVersion: kubetune.dev/v1alpha1
kind: FineTuneRun
metadata:
  name: webview-demo
spec:
  dataset:
    categories: [identity]
  training:
    method: lora
    maxSteps: {len(LOSSES)}
    loggingSteps: 1
  export:
    types: [q8_0]
  evaluate:
    prompts:
      - prompt: {json.dumps(HOSTILE_PROMPT)}
        expectContains: ["${{NAME}}"]
"""


def browser(profile: Path, downloads: Path) -> webdriver.Chrome:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(60)
    return driver


def kubetune(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", *args], cwd=cwd, env=ENV, text=True,
                          capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done


def _stage_outputs(stage: str, out: Path) -> dict[str, Any]:
    """What each stage publishes, in its real formats (metrics.csv from the train job's writer, the gate's
    results.json as jobs/evaluate.py writes it), with made-up weights."""
    if stage == "train":
        write_metrics_csv([{"step": i + 1, "epoch": (i + 1) / len(LOSSES), "loss": loss, "learning_rate": 2e-4,
                            "tokens_per_second": 900.0} for i, loss in enumerate(LOSSES)], out / "metrics.csv")
        (out / "adapter").mkdir()
        (out / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(40_000))
        return {"steps": len(LOSSES), "finalLoss": LOSSES[-1]}
    if stage == "merge":
        (out / "model.safetensors").write_bytes(os.urandom(60_000))
        return {"dtype": "bfloat16"}
    if stage == "convert":
        (out / "model-q8_0.gguf").write_bytes(b"GGUF" + os.urandom(300_000))
        return {"types": ["q8_0"]}
    report = [{"file": "model-q8_0.gguf", "passRate": 1.0, "top1Agreement": 0.97, "meanKl": 0.0123,
               "greedyAgreement": 0.9, "prompts": [{"prompt": HOSTILE_PROMPT, "answer": HOSTILE_ANSWER,
                                                     "passed": True, "reason": "contains 'Nova'"}]}]
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return {"summary": "model-q8_0.gguf: 100% prompts"}


def prepare_local_run(folder: Path) -> Path:
    """A succeeded local run under `folder`/.kubetune: the dataset stage really runs; every later stage's output
    is published at the key and folder the planner computes (stages.stage_ref), and `kubetune run` then takes
    them as done, writing the status and events of a whole run."""
    manifest = folder / "run.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    state = (folder / ".kubetune").resolve()
    store = LocalStore(state / "store")
    kubetune(folder, "run", str(manifest), "--to-stage", "dataset")
    run = load_runs(manifest)[0]
    sources = resolve_sources(run.spec, store_factory=open_store, cache=DigestCache(state / "digests.json"),
                              hub_cache=default_cache_dir() / "hf")
    status = json.loads((state / "runs" / run.namespace / run.name / "status.json").read_text())["status"]
    digests = {"dataset": status["stages"]["dataset"]["outputDigest"]}
    for stage in RUN_STAGES[1:]:
        ref = stage_ref(run.namespace, run.name, run.spec, stage, digests, sources)
        out = folder / "outputs" / stage
        out.mkdir(parents=True)
        metadata = _stage_outputs(stage, out)
        digests[stage] = content_digest(publish(store, ref.prefix, out, stage=stage, input_key=ref.key,
                                                metadata=metadata))
    kubetune(folder, "run", str(manifest))
    return manifest


@contextmanager
def kubetune_ui(folder: Path) -> Iterator[str]:
    """`kubetune ui --port 0` in `folder`; yields the URL it prints."""
    process = subprocess.Popen([sys.executable, "-P", "-m", "kubetune.cli", "ui", "--port", "0"], cwd=folder,
                               env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, line
        yield found.group(0)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
