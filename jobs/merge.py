"""The merge stage: the trained LoRA adapter into the original 16-bit base weights, one tensor at a time.

Reads the train stage's final adapter (`adapter/` in its output) or, with `spec.merge.checkpoint`, that checkpoint
(`checkpoints/<name>/`, published with its own manifest, holds the adapter files beside the training state); resolves the base model
(`spec.baseModel`, never the 4-bit training model); writes the merged Hugging Face folder and publishes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kubetune.jobs.lora_merge import MergeStopped, merge_adapter
from kubetune.jobs.lora_plan import MergeError
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.jobs.sources import base_model_folder
from kubetune.store import fetch, join_key, read_manifest

ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"


def run(ctx: JobContext) -> None:
    spec = ctx.run.spec
    ctx.progress(message="fetching the adapter")
    adapter = _fetch_adapter(ctx, spec.merge.checkpoint)

    ctx.progress(message=f"resolving base model {spec.base_model.uri}")
    base = base_model_folder(ctx)

    merged = ctx.workdir / "merged"
    if merged.exists():
        shutil.rmtree(merged)  # left by an earlier attempt in a reused workdir
    ctx.progress(message="merging", step=0)
    try:
        result = merge_adapter(
            base,
            adapter,
            merged,
            dtype=spec.merge.dtype,
            on_shard=lambda done, total: ctx.progress(message=f"wrote shard {done} of {total}", step=done,
                                                      totalSteps=total),
            should_stop=ctx.stop.is_set,
        )
    except MergeError as exc:
        raise ConfigError(str(exc)) from exc
    except MergeStopped as exc:
        raise Stopped(str(exc)) from exc

    ctx.progress(message="publishing the merged model", force=True)
    ctx.publish(
        merged,
        {
            "dtype": result.dtype,
            "vocabSize": result.vocab_size,
            "shards": len(result.shards),
            "tiedEmbeddings": result.tied_embeddings,
            "loraModules": result.lora_modules,
            "replacedTensors": list(result.replaced),
            "adapter": spec.merge.checkpoint or "final",
            "baseModel": spec.base_model.uri,
        },
    )


def _fetch_adapter(ctx: JobContext, checkpoint: str | None) -> Path:
    dest = ctx.workdir / "train"
    if dest.exists():
        shutil.rmtree(dest)
    if checkpoint is None:
        ctx.fetch("train", dest)
        adapter = dest / ADAPTER_DIR
    else:
        ctx.upstream_manifest("train")  # the train output must be complete (its digest is part of this stage's key)
        prefix = join_key(ctx.run.stages["train"].prefix, f"{CHECKPOINTS_DIR}/{checkpoint}")
        manifest = read_manifest(ctx.store, prefix)
        if manifest is None:
            raise ConfigError(f"spec.merge.checkpoint: no complete checkpoint {checkpoint!r} at {ctx.store.uri_for(prefix)}")
        fetch(ctx.store, prefix, dest, manifest)
        adapter = dest
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"the train output has no adapter_config.json in {adapter.relative_to(dest.parent)}")
    return adapter
