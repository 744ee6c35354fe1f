"""The convert stage: the merged model → one GGUF per requested type, each published with size and sha256."""

from __future__ import annotations

from kubetune.jobs.runtime import ConfigError, JobContext
from kubetune.llama.convert import ConversionError, ConvertProgress, convert


def run(ctx: JobContext) -> None:
    merged = ctx.workdir / "merged"
    ctx.progress(message="fetching the merged model")
    ctx.fetch("merge", merged)
    outputs = ctx.workdir / "gguf"
    outputs.mkdir(parents=True, exist_ok=True)
    types = list(ctx.run.spec.export.types)

    def report(event: ConvertProgress) -> None:
        verb = "quantizing to" if event.stage == "quantize" else "writing"
        ctx.progress(step=event.tensors_done, totalSteps=event.tensors_total, message=f"{verb} {event.outtype}")

    try:
        files = convert(merged, outputs, types, progress=report)
    except ConversionError as exc:
        raise ConfigError(f"cannot convert the merged model: {exc}") from exc
    ctx.publish(
        outputs,
        {"files": [{"name": f.path.name, "type": f.outtype, "size": f.size, "sha256": f.sha256} for f in files]},
    )
