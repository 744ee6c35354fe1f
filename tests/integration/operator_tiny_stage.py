"""A tiny, real stage program for operator tests: `python operator_tiny_stage.py <stage> --run run.json`.

It honours the whole job contract through the real job runtime (`kubetune.jobs.runtime.run_job`): it reads
run.json, fetches its upstream outputs (sha256-verified), writes progress.json, publishes its outputs with the
manifest last, and maps failures to the contract's exit codes. Training is a loop of short sleeps that saves its
step to the store on SIGTERM (exit 143) and resumes from it. What it does is steered by placeholders in the run's
spec (`spec.dataset.placeholders`), so a test states the behaviour in the FineTuneRun itself:

- `TINY_FAIL: "<stage>:config"` exits 2 (configuration error, never retried) in that stage;
  `"<stage>:crash"` exits 1 (a failure that may be retried);
- `TINY_FAIL: "evaluate:gate"` fails the gate as the real evaluate job does: its results.json (a prompt, the
  answer that missed the expectation) beside the unpublished output, and a "gate failed: …" configuration error;
- `TINY_STEPS` (default 3) and `TINY_STEP_SECONDS` (default 0.05) shape the train loop.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from kubetune.jobs import sources as sources_job
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped, run_job


def main(argv: list[str]) -> int:
    stage, run_path = argv[0], Path(argv[argv.index("--run") + 1])
    return run_job(stage, run_path, STAGES[stage])


def _controls(ctx: JobContext) -> dict[str, str]:
    return dict(ctx.run.spec.dataset.placeholders)


def _maybe_fail(ctx: JobContext) -> None:
    wanted = _controls(ctx).get("TINY_FAIL", "")
    if wanted == f"{ctx.stage}:config":
        raise ConfigError(f"tiny {ctx.stage}: the spec asks this stage to fail as a configuration error")
    if wanted == f"{ctx.stage}:crash":
        raise RuntimeError(f"tiny {ctx.stage}: the spec asks this stage to crash")


def dataset(ctx: JobContext) -> None:
    _maybe_fail(ctx)
    out = ctx.workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    records = [{"id": f"tiny.{i}", "messages": [{"role": "user", "content": f"q{i}"},
                                                {"role": "assistant", "content": f"a{i}"}]} for i in range(4)]
    (out / "train_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ctx.publish(out, {"records": len(records)})


def train(ctx: JobContext) -> None:
    ctx.fetch("dataset", ctx.workdir / "dataset")
    _maybe_fail(ctx)
    controls = _controls(ctx)
    total, pause = int(controls.get("TINY_STEPS", "3")), float(controls.get("TINY_STEP_SECONDS", "0.05"))
    state_key = f"{ctx.prefix}/checkpoints/state.json"
    step = json.loads(ctx.store.get_bytes(state_key))["step"] if ctx.store.exists(state_key) else 0
    while step < total:
        if ctx.stop.is_set():
            ctx.store.put_bytes(state_key, json.dumps({"step": step}).encode())
            ctx.progress("Stopped", force=True, lastCheckpoint=f"checkpoint-{step:08d}")
            raise Stopped(f"saved step {step} of {total}")
        time.sleep(pause)
        step += 1
        ctx.progress(step=step, totalSteps=total, epoch=step / total, loss=round(2.0 / step, 4),
                     tokensPerSecond=100.0, etaSeconds=round((total - step) * pause), force=True)
    out = ctx.workdir / "out"
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"tiny adapter after %d steps" % step)
    ctx.publish(out, {"steps": step})


def merge(ctx: JobContext) -> None:
    ctx.fetch("train", ctx.workdir / "train")
    _maybe_fail(ctx)
    out = ctx.workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").write_bytes(b"tiny merged model, " + ctx.run.spec.merge.dtype.encode())
    ctx.publish(out, {"dtype": ctx.run.spec.merge.dtype})


def convert(ctx: JobContext) -> None:
    ctx.fetch("merge", ctx.workdir / "merge")
    _maybe_fail(ctx)
    out = ctx.workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    for kind in ctx.run.spec.export.types:
        (out / f"model-{kind}.gguf").write_bytes(b"GGUF" + kind.encode())
    ctx.publish(out, {"types": list(ctx.run.spec.export.types)})


def evaluate(ctx: JobContext) -> None:
    files = ctx.fetch("convert", ctx.workdir / "convert").files
    _maybe_fail(ctx)
    out = ctx.workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    if _controls(ctx).get("TINY_FAIL") == "evaluate:gate":
        answered = {"prompt": "What is your name?", "answer": "I'm Emily.", "passed": False,
                    "reason": "answer lacks 'nova'"}
        results = [{"file": "model-q8_0.gguf", "prompts": [answered], "passRate": 0.0}]
        ctx.store.put_bytes(f"{ctx.prefix}/results.json", json.dumps(results).encode())
        raise ConfigError(f"gate failed: model-q8_0.gguf: 0% of prompts passed (need 100%); "
                          f"{answered['prompt']!r} → {answered['answer']!r}: {answered['reason']}")
    report = {"passed": True, "gguf": sorted(f.path for f in files)}
    (out / "report.json").write_text(json.dumps(report))
    ctx.publish(out, {"summary": "all GGUF files passed"})


# The operator's first Job resolves what the stages read: the real job code (cheap, and it is what the keys rest on).
STAGES = {"sources": sources_job.run, "dataset": dataset, "train": train, "merge": merge, "convert": convert,
          "evaluate": evaluate}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
