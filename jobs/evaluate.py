"""The evaluate stage: the smoke gate. Every GGUF answers the spec's prompts in llama.cpp with the training chat
template and stop sequences; answers are checked against expectations, and each GGUF's next-token distributions are
compared with the merged model's. With an eval split, the train stage's held-out loss is gated too
(`eval_loss_gate`). A failed gate fails the run with the prompt and answer, or the figures, in the reason."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubetune.api.types import EvalPrompt, FineTuneRunSpec
from kubetune.cpus import usable_cpus
from kubetune.jobs.eval_loss_gate import eval_loss_gate
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.llama.checks import HfReference, compare_with_reference, generate_chat, hf_reference, load

log = logging.getLogger(__name__)

# Used for the agreement checks when the spec gives no reference text: plain prose any tokenizer handles.
DEFAULT_REFERENCE_TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by rewiring circuits; "
    "later, stored programs let the same hardware run many tasks. Compilers translated readable code into machine "
    "instructions, and operating systems shared one computer among many users. Today, clusters schedule thousands "
    "of jobs across many machines, and a single declarative file can describe a whole training pipeline."
)
GREEDY_TOKENS = 24
# Threads per llama.cpp context and for torch: one each, with independent work side by side instead. On a shared
# machine a busy core stalls multi-threaded llama.cpp and torch at every operation's barrier (measured: 24 tokens took
# 1.1-18 s on two threads against 0.55 s on one, beside another busy process on two cores).
WORKER_THREADS = 1


class GateFailed(ConfigError):
    """The model does not pass the gate: deterministic, so never retried."""


@dataclass(frozen=True)
class PromptResult:
    prompt: str
    answer: str
    passed: bool
    reason: str


def substitute(text: str, placeholders: dict[str, str]) -> str:
    for name, value in placeholders.items():
        text = text.replace("${" + name + "}", value)
    return text


def check_answer(answer: str, prompt: EvalPrompt, placeholders: dict[str, str]) -> PromptResult:
    """Case-insensitive expectations, with `${NAME}`-style placeholders filled in."""
    lowered = answer.lower()
    for expected in prompt.expect_contains:
        wanted = substitute(expected, placeholders)
        if wanted.lower() not in lowered:
            return PromptResult(prompt.prompt, answer, False, f"answer lacks {wanted!r}")
    for unwanted in prompt.expect_not_contains:
        banned = substitute(unwanted, placeholders)
        if banned.lower() in lowered:
            return PromptResult(prompt.prompt, answer, False, f"answer contains {banned!r}")
    return PromptResult(prompt.prompt, answer, True, "ok")


def chat_template(model_dir: Path) -> str:
    """The template the model was trained with: chat_template.jinja, else the tokenizer config's."""
    template_file = model_dir / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if not isinstance(template, str):
        raise ConfigError(f"the merged model in {model_dir} has no chat template")
    return template


def merged_reference(merged: Path | None, spec: FineTuneRunSpec) -> HfReference | None:
    """The merged model's side of the agreement checks (None without a merged model), computed once for every GGUF
    made from it: its logits over the reference text and its greedy continuation of the text's first half."""
    if merged is None:
        return None
    reference = spec.evaluate.reference_text or DEFAULT_REFERENCE_TEXT
    return hf_reference(merged, reference, reference[: len(reference) // 2], max_new_tokens=GREEDY_TOKENS,
                        threads=WORKER_THREADS)


def answer_prompts(gguf: Path, spec: FineTuneRunSpec, template: str,
                   stop: threading.Event | None = None) -> list[PromptResult]:
    """The GGUF's answers to the spec's prompts in llama.cpp, checked against their expectations."""
    placeholders = dict(spec.dataset.placeholders)
    llm = load(gguf, n_ctx=2048, n_threads=WORKER_THREADS)
    try:
        results = []
        for prompt in spec.evaluate.prompts:
            if stop is not None and stop.is_set():
                raise Stopped("stopped during evaluation")
            answer = generate_chat(llm, [{"role": "user", "content": prompt.prompt}], template,
                                   stop=spec.training.stop_sequences, max_tokens=spec.evaluate.max_tokens)
            result = check_answer(answer, prompt, placeholders)
            log.info("%s | %s → %r (%s)", gguf.name, prompt.prompt, answer, result.reason)
            results.append(result)
    finally:
        llm.close()
    return results


def gguf_report(gguf: Path, results: list[PromptResult], reference: HfReference | None) -> dict[str, Any]:
    """The GGUF's checked answers; agreement with the merged model when its reference is given."""
    passed = sum(r.passed for r in results)
    report: dict[str, Any] = {
        "file": gguf.name,
        "prompts": [asdict(r) for r in results],
        "passRate": passed / len(results) if results else 1.0,
        "top1Agreement": None,
        "meanKl": None,
        "greedyAgreement": None,
    }
    if reference is not None:
        logits, greedy = compare_with_reference(gguf, reference, n_threads=WORKER_THREADS)
        report.update(top1Agreement=logits.top1_agreement, meanKl=logits.mean_kl, greedyAgreement=greedy.fraction)
    return report


def gguf_reports(ggufs: list[Path], merged: Path | None, spec: FineTuneRunSpec, template: str,
                 stop: threading.Event | None = None,
                 on_gguf: Callable[[int, Path], None] | None = None) -> list[dict[str, Any]]:
    """Every GGUF's report. Independent work runs side by side, one thread each (llama.cpp and torch release the
    GIL): the merged model's reference and every GGUF's answers first, in that order, then each GGUF's agreement
    check, queued behind them so that it only waits for work already running."""
    with ThreadPoolExecutor(max_workers=usable_cpus(), thread_name_prefix="evaluate") as pool:
        pending = pool.submit(merged_reference, merged, spec)
        answers = [pool.submit(answer_prompts, gguf, spec, template, stop) for gguf in ggufs]

        def report(gguf: Path, results: Future[list[PromptResult]]) -> dict[str, Any]:
            return gguf_report(gguf, results.result(), pending.result())

        reports = [pool.submit(report, gguf, results) for gguf, results in zip(ggufs, answers, strict=True)]
        for index, (gguf, results) in enumerate(zip(ggufs, answers, strict=True)):
            if on_gguf is not None:
                on_gguf(index, gguf)
            results.result()
        return [future.result() for future in reports]


def summarize(report: dict[str, Any]) -> str:
    line = f"{report['file']}: {report['passRate']:.0%} prompts"
    if report["top1Agreement"] is not None:
        line += f", top-1 {report['top1Agreement']:.1%}, KL {report['meanKl']:.4f}"
    return line


def gate_failure(report: dict[str, Any], min_pass_rate: float, min_top1: float | None) -> str | None:
    """Why this GGUF fails the gate, or None."""
    if report["passRate"] < min_pass_rate:
        failed = next(p for p in report["prompts"] if not p["passed"])
        return (f"{report['file']}: {report['passRate']:.0%} of prompts passed (need {min_pass_rate:.0%}); "
                f"{failed['prompt']!r} → {failed['answer']!r}: {failed['reason']}")
    if min_top1 is not None and report["top1Agreement"] is None:
        return f"{report['file']}: top-1 agreement needs the merged model to compare with"
    if min_top1 is not None and report["top1Agreement"] < min_top1:
        return (f"{report['file']}: top-1 agreement with the merged model {report['top1Agreement']:.1%} "
                f"< {min_top1:.0%}")
    return None


def run(ctx: JobContext) -> None:
    spec = ctx.run.spec
    merged, ggufs = ctx.workdir / "merged", ctx.workdir / "gguf"
    ctx.progress(message="fetching the merged model and GGUF files")
    ctx.fetch("merge", merged)
    ctx.fetch("convert", ggufs)
    template = chat_template(merged)
    files = sorted(ggufs.glob("*.gguf"))
    if not files:
        raise ConfigError("the convert stage published no GGUF file")
    loss_gate = eval_loss_gate(ctx.upstream_manifest("train").metadata, spec.evaluate, spec.dataset.eval_split)
    log.info("%s", loss_gate["summary"])
    reports = gguf_reports(files, merged, spec, template, ctx.stop, on_gguf=lambda index, gguf: ctx.progress(
        step=index, totalSteps=len(files), message=f"gating {gguf.name} (the merged model's reference alongside)"))
    outputs = ctx.workdir / "report"
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "results.json").write_text(json.dumps(reports, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (outputs / "eval_loss.json").write_text(json.dumps(loss_gate, indent=2) + "\n", encoding="utf-8")
    failures = [f for r in reports if (f := gate_failure(r, spec.evaluate.min_pass_rate, spec.evaluate.min_top1_agreement))]
    if loss_gate["failure"]:
        failures.append(loss_gate["failure"])
    summary = "; ".join([*(summarize(r) for r in reports), loss_gate["summary"]])
    if failures:
        # Kept for inspection, but without a manifest: a failed gate is not a stage output.
        ctx.store.put_file(f"{ctx.prefix}/results.json", outputs / "results.json")
        ctx.store.put_file(f"{ctx.prefix}/eval_loss.json", outputs / "eval_loss.json")
        raise GateFailed("gate failed: " + " | ".join(failures))
    ctx.publish(outputs, {"summary": summary, "evalLoss": loss_gate, "results": [{k: v for k, v in r.items() if k != "prompts"} for r in reports],
                          "answers": {r["file"]: [p["answer"] for p in r["prompts"]] for r in reports}})
