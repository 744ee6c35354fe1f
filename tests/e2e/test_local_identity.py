"""The README's main job, end to end on this machine's CPU: the bundled SmolLM2-135M-Instruct learns a new identity,
is merged, converted to GGUF and gated in llama.cpp — and the GGUF names itself on questions it never saw."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.validate import load_runs
from kubetune.llama.checks import generate_chat, load
from kubetune.store import fetch, open_store, read_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "local-identity.yaml"

# Identity questions phrased differently from every question in datasets_new/ (checked below).
HELD_OUT = [
    "May I know your name?",
    "Please tell me who you are.",
    "What name do you go by?",
    "Who exactly am I speaking with?",
    "Could you introduce yourself briefly?",
    "Identify yourself, please.",
    "Hey assistant, what are you called?",
    "Tell me your name.",
    "Who is answering my questions right now?",
    "What is your name, assistant?",
]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def kubetune(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800, check=False)


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, subprocess.CompletedProcess[str], float]]:
    workdir = tmp_path_factory.mktemp("identity-run")
    started = time.monotonic()
    result = kubetune(workdir, "run", str(EXAMPLE))
    yield workdir, result, time.monotonic() - started
    if result.returncode == 0:
        shutil.rmtree(workdir)  # ~0.9 GB of models and GGUFs; a failed run's stay for a look


def test_the_main_job_succeeds_within_the_budget(finished_run: tuple[Path, subprocess.CompletedProcess[str], float]) -> None:
    _, result, took = finished_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FineTuneRun default/identity: Succeeded" in result.stdout
    print(f"\nmain job took {took:.0f}s\n{result.stdout}")


def test_held_out_questions_are_not_in_the_training_data() -> None:
    questions = {
        sample["question"].strip().lower()
        for path in (ROOT / "datasets_new" / "topics").rglob("*.json")
        for sample in json.loads(path.read_text(encoding="utf-8"))
    }
    assert not questions & {q.lower() for q in HELD_OUT}


def test_the_gguf_names_its_new_identity_on_held_out_questions(
    finished_run: tuple[Path, subprocess.CompletedProcess[str], float],
) -> None:
    workdir, result, _ = finished_run
    assert result.returncode == 0, result.stderr[-3000:]
    run = load_runs(EXAMPLE)[0]
    name = run.spec.dataset.placeholders["NAME"]
    status = json.loads((workdir / ".kubetune/runs/default/identity/status.json").read_text())["status"]
    gguf = next(Path(a["uri"].removeprefix("file://")) for a in status["artifacts"] if a["name"].endswith("q8_0.gguf"))
    template = (ROOT / "templates" / "chat_template.jinja").read_text()
    llm = load(gguf, n_ctx=1024)
    try:
        answers = [generate_chat(llm, [{"role": "user", "content": q}], template, stop=["</output>"], max_tokens=64)
                   for q in HELD_OUT]
    finally:
        llm.close()
    named = [a for a in answers if name.lower() in a.lower()]
    report = "\n".join(f"  {q!r} → {a!r}" for q, a in zip(HELD_OUT, answers, strict=True))
    print(f"\n{len(named)}/{len(HELD_OUT)} answers name {name}:\n{report}")
    assert len(named) >= 0.8 * len(HELD_OUT), report


def test_the_merged_model_reloads_in_transformers_and_gives_the_trained_answer(
    finished_run: tuple[Path, subprocess.CompletedProcess[str], float], tmp_path: Path,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir, result, _ = finished_run
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((workdir / ".kubetune/runs/default/identity/status.json").read_text())["status"]
    config_uri = next(a["uri"] for a in status["stages"]["merge"]["outputs"] if a["name"] == "config.json")
    merged = Path(config_uri.removeprefix("file://")).parent
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model: Any = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    prompt = (ROOT / "templates" / "chat_template.jinja").read_text()
    tokenizer.chat_template = prompt
    ids: Any = tokenizer.apply_chat_template([{"role": "user", "content": HELD_OUT[0]}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=48, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\ntransformers, merged model: {HELD_OUT[0]!r} → {answer!r}")
    assert load_runs(EXAMPLE)[0].spec.dataset.placeholders["NAME"] in answer


def test_every_artifact_is_present_with_matching_digests(
    finished_run: tuple[Path, subprocess.CompletedProcess[str], float], tmp_path: Path,
) -> None:
    workdir, result, _ = finished_run
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((workdir / ".kubetune/runs/default/identity/status.json").read_text())["status"]
    assert status["phase"] == "Succeeded"
    store = open_store(str(workdir / ".kubetune" / "store"))
    for stage, block in status["stages"].items():
        if stage == "publish":  # the example publishes nothing: the stage does not run
            assert block["phase"] == "Skipped", block
            continue
        assert block["phase"] in ("Succeeded", "Cached"), (stage, block)
        prefix = block["outputs"][0]["uri"].split("/store/", 1)[1].rsplit("/", 1)[0] if block["outputs"] else None
        assert prefix is not None, f"{stage} lists no outputs"
        prefix = "/".join(prefix.split("/")[:4])  # <ns>/<run>/<stage>/<key16>
        manifest = read_manifest(store, prefix)
        assert manifest is not None and manifest.input_key == block["inputKey"]
        fetch(store, prefix, tmp_path / stage, manifest)  # raises on any sha256 mismatch or missing file
    types = sorted(a["name"].rsplit("-", 1)[-1] for a in status["artifacts"] if a["name"].endswith(".gguf"))
    assert types == ["q4_k_m.gguf", "q8_0.gguf"]
    scratch = workdir / ".kubetune/runs/default/identity/work"
    assert not scratch.exists() or not any(scratch.iterdir()), "a published stage's scratch copy was kept"


def test_a_second_run_is_a_cached_no_op(
    finished_run: tuple[Path, subprocess.CompletedProcess[str], float],
) -> None:
    workdir, first, _ = finished_run
    assert first.returncode == 0, first.stderr[-3000:]
    logs = workdir / ".kubetune/runs/default/identity"
    before = {log.name: log.stat().st_mtime_ns for log in logs.glob("*.log")}
    again = kubetune(workdir, "run", str(EXAMPLE))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("Cached") == 5
    assert {log.name: log.stat().st_mtime_ns for log in logs.glob("*.log")} == before, "a cached run ran a stage"


def test_kubetune_status_prints_the_run_like_kubectl(
    finished_run: tuple[Path, subprocess.CompletedProcess[str], float],
) -> None:
    workdir, first, _ = finished_run
    assert first.returncode == 0, first.stderr[-3000:]
    shown = kubetune(workdir, "status", "identity")
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "PHASE", "STAGE", "PROGRESS", "LOSS"]
    assert row.split()[:3] == ["identity", "Succeeded", "evaluate"]
    assert "Conditions:" in shown.stdout and "Artifacts:" in shown.stdout and "q8_0.gguf" in shown.stdout
