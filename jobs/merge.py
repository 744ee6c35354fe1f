"""The merge stage: the trained LoRA adapter into the original 16-bit base weights, one tensor at a time.

Reads the train stage's final adapter (`adapter/` in its output) or, with `spec.merge.checkpoint`, that checkpoint
(`checkpoints/<name>/`, published with its own manifest, holds the adapter files beside the training state); resolves the base model
(`spec.baseModel`, never the 4-bit training model); writes the merged Hugging Face folder and publishes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kubetune.jobs.basemodel import BaseModelError, StoreFactory, default_cache_dir, resolve_base_model
from kubetune.jobs.lora_merge import MergeError, MergeStopped, merge_adapter
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.jobs.sources import check_base_model
from kubetune.store import Store, fetch, join_key, open_store, read_manifest

ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"


def run(ctx: JobContext) -> None:
    spec = ctx.run.spec
    ctx.progress(message="fetching the adapter")
    adapter = _fetch_adapter(ctx, spec.merge.checkpoint)

    ctx.progress(message=f"resolving base model {spec.base_model.uri}")
    check_base_model(ctx)  # the model its key was computed from
    try:
        base = resolve_base_model(spec.base_model, store_factory=_store_factory(ctx), cache_dir=default_cache_dir())
    except BaseModelError as exc:
        raise ConfigError(str(exc)) from exc

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


def _store_factory(ctx: JobContext) -> StoreFactory:
    settings = ctx.run.store

    def open_model_store(uri: str) -> Store:
        # s3:// base models live on the same S3 service as the run's store (same endpoint, region, addressing).
        return open_store(uri, endpoint=settings.endpoint, region=settings.region, path_style=settings.path_style)

    return open_model_store
