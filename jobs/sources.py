"""The `sources` step as a Job: resolve what the run's stages read to content digests and publish `sources.json`.

The operator cannot read the jobs' data sources (the credentials and the job image's files are the jobs'), so it
runs this first, like an initializer, and computes the stage keys from what it publishes. `check_dataset` is the
dataset stage's side of the contract: it reads only the content its key was computed from; `base_model_folder` is the
model stages' side: an hf:// ref is read at the commit it was resolved to, and the rest is checked where that is cheap
(a bundled GGUF's digest is cached by stat, S3 is a listing; a local folder would be hashed again in full, so it is
checked only through spec.baseModel.sha256).
"""

from __future__ import annotations

from pathlib import Path

from kubetune.api.types import BaseModelSpec
from kubetune.digests import DigestCache
from kubetune.jobs.basemodel import BaseModelError, default_cache_dir, resolve_base_model
from kubetune.jobs.runtime import ConfigError, JobContext
from kubetune.runconfig import RunConfig
from kubetune.sources import (
    SOURCES_FILE,
    SourceError,
    StoreFactory,
    base_model_source,
    dataset_source,
    is_local_model,
    resolve_sources,
)
from kubetune.store import open_store

DIGEST_CACHE = "digests.json"


def run(ctx: JobContext) -> None:
    ctx.progress(message="resolving the dataset, chat template and base model to content digests")
    cache_dir = default_cache_dir()
    cache = DigestCache(cache_dir / DIGEST_CACHE)
    try:
        sources = resolve_sources(ctx.run.spec, store_factory=store_factory(ctx.run), cache=cache,
                                  hub_cache=cache_dir / "hf")
    except SourceError as error:
        raise ConfigError(str(error)) from error
    cache.save()
    outputs = ctx.workdir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / SOURCES_FILE).write_bytes(sources.dumps())
    ctx.publish(outputs, {"dataset": sources.dataset.digest, "baseModel": sources.base_model.digest,
                          "template": sources.template.digest})


def check_dataset(ctx: JobContext) -> None:
    """Fail unless the dataset tree still has the content its stage key was computed from."""
    resolved = ctx.run.sources
    if resolved is None:
        return  # a run config written by hand, without resolved sources: nothing to hold the tree to
    try:
        now = dataset_source(ctx.run.spec.dataset, store_factory(ctx.run))
    except SourceError as error:
        raise ConfigError(str(error)) from error
    if now.digest != resolved.dataset.digest:
        raise ConfigError(
            f"spec.dataset.uri: the dataset at {now.uri} changed since it was resolved (digest "
            f"{resolved.dataset.digest[:12]}…, now {now.digest[:12]}…): run again (`kubetune run`), or set the "
            "annotation kubetune.dev/refresh to a new value on the FineTuneRun, to resolve it afresh"
        )


def base_model_folder(ctx: JobContext) -> Path:
    """The base model's local folder, holding the content the stage key was computed from."""
    check_base_model(ctx)
    try:
        return resolve_base_model(pinned_base_model(ctx), store_factory=store_factory(ctx.run),
                                  cache_dir=default_cache_dir())
    except BaseModelError as error:
        raise ConfigError(str(error)) from error


def pinned_base_model(ctx: JobContext) -> BaseModelSpec:
    """The base model as resolved: an hf:// ref is pinned to the commit it pointed to then, so every stage reads
    the same weights however the branch moves meanwhile."""
    base, resolved = ctx.run.spec.base_model, ctx.run.sources
    if resolved is None or resolved.base_model.revision is None or not base.uri.startswith("hf://"):
        return base
    return base.model_copy(update={"revision": resolved.base_model.revision})


def check_base_model(ctx: JobContext) -> None:
    """Fail unless the base model still is what the stage key was computed from (where that is cheap to tell; an
    hf:// ref needs no check: it is read at the commit it was resolved to)."""
    resolved, base = ctx.run.sources, ctx.run.spec.base_model
    if resolved is None or is_local_model(base.uri) or base.uri.startswith("hf://"):
        return
    cache_dir = default_cache_dir()
    cache = DigestCache(cache_dir / DIGEST_CACHE)
    try:
        now = base_model_source(base, store_factory(ctx.run), cache, cache_dir / "hf")
    except SourceError as error:
        raise ConfigError(str(error)) from error
    cache.save()
    if now.digest != resolved.base_model.digest:
        was = resolved.base_model.revision or f"digest {resolved.base_model.digest[:12]}…"
        raise ConfigError(
            f"spec.baseModel.uri: the model at {now.uri} changed since it was resolved ({was}, now "
            f"{now.revision or now.digest[:12] + '…'}): run again (`kubetune run`), or set the annotation "
            "kubetune.dev/refresh to a new value on the FineTuneRun, to resolve it afresh"
        )


def store_factory(run: RunConfig) -> StoreFactory:
    store = run.store
    return lambda uri: open_store(uri, endpoint=store.endpoint, region=store.region, path_style=store.path_style)
