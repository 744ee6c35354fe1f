"""The `sources` step as a Job: resolve what the run's stages read to content digests and publish `sources.json`.

The operator cannot read the jobs' data sources (the credentials and the job image's files are the jobs'), so it
runs this first, like an initializer, and computes the stage keys from what it publishes. `check_dataset` is the
dataset stage's side of the contract: it reads only the content its key was computed from; `base_model_folder` is the
model stages' side: an hf:// model is read from its snapshot in the run's store (model_snapshot.py), else at the
commit it was resolved to, and the rest is checked where that is cheap
(a bundled GGUF's digest is cached by stat, S3 is a listing; a local folder would be hashed again in full, so it is
checked only through spec.baseModel.sha256).
"""

from __future__ import annotations

from pathlib import Path

from kubetune.api.types import BaseModelSpec
from kubetune.digests import DigestCache
from kubetune.jobs.basemodel import BaseModelError, default_cache_dir, resolve_base_model
from kubetune.jobs.runtime import ConfigError, JobContext
from kubetune.model_snapshot import SnapshotError, cached_hub_folder, fetch_snapshot, files_digest, publish_snapshot
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
    ctx.progress(message="resolving the dataset, chat template and base model to content digests (an hf:// model: "
                         "its files downloaded once into the store)")
    cache_dir = default_cache_dir()
    cache = DigestCache(cache_dir / DIGEST_CACHE)
    try:
        sources = resolve_sources(ctx.run.spec, store_factory=store_factory(ctx.run), cache=cache,
                                  hub_cache=cache_dir / "hf", snapshots=ctx.store)
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
    if ctx.run.spec.dataset.uri.startswith("hf://"):
        return  # read at the commit it was resolved to, whatever its branch points to now
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
    """The base model's local folder, holding the content the stage key was computed from: an hf:// model from its
    snapshot in the run's store (stored by the sources step, or here by the first stage that finds none)."""
    try:
        check_base_model(ctx)
        snapshot = hub_snapshot_folder(ctx)
        if snapshot is not None:
            return snapshot
        folder = resolve_base_model(pinned_base_model(ctx), store_factory=store_factory(ctx.run),
                                    cache_dir=default_cache_dir())
    except BaseModelError as error:  # KUBETUNE_CACHE no folder, a model that cannot be taken: retrying cannot help
        raise ConfigError(str(error)) from error
    store_hub_snapshot(ctx, folder)
    return folder


def hub_snapshot_folder(ctx: JobContext) -> Path | None:
    """A resolved hf:// model already on this machine (`kubetune run` resolved it into the Hugging Face cache), else
    its stored snapshot, fetched (and checked) once per machine; None without either."""
    resolved = ctx.run.sources
    if resolved is None or resolved.base_model.revision is None or not ctx.run.spec.base_model.uri.startswith("hf://"):
        return None
    cache_dir = default_cache_dir()
    repo_id = ctx.run.spec.base_model.uri[len("hf://"):].partition("@")[0]
    cached = cached_hub_folder(cache_dir / "hf", repo_id, resolved.base_model.revision)
    if cached is not None:
        digests = DigestCache(cache_dir / DIGEST_CACHE)  # big files by stat: no rehash of the weights per stage
        digest = files_digest(cached, digests)
        digests.save()
        if digest == resolved.base_model.digest:
            return cached
    try:
        return fetch_snapshot(ctx.store, resolved.base_model.digest, cache_dir)
    except SnapshotError as error:
        raise ConfigError(f"spec.baseModel.uri: {error}") from None


def store_hub_snapshot(ctx: JobContext, folder: Path) -> None:
    """Store the hf:// model just downloaded, once its files are checked to be the resolved ones."""
    resolved = ctx.run.sources
    if resolved is None or resolved.base_model.revision is None or not ctx.run.spec.base_model.uri.startswith("hf://"):
        return
    cache = DigestCache(default_cache_dir() / DIGEST_CACHE)
    digest = files_digest(folder, cache)
    if digest != resolved.base_model.digest:
        raise ConfigError(f"spec.baseModel.uri: the model files of {resolved.base_model.uri} at commit "
                          f"{resolved.base_model.revision} have digest {digest[:12]}…, not the resolved "
                          f"{resolved.base_model.digest[:12]}…: the Hub served other files for that commit")
    repo_id = ctx.run.spec.base_model.uri[len("hf://"):].partition("@")[0]
    publish_snapshot(ctx.store, folder, digest, repo_id=repo_id, commit=resolved.base_model.revision, cache=cache)
    cache.save()


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
