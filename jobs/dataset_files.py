"""The dataset stage for data files (`spec.dataset.format` messages, sharegpt or alpaca): the file or folder of
`spec.dataset.uri` (local, or downloaded from `s3://` or the Hugging Face Hub) read into conversations, split, counted and published as
train_data.jsonl (+ eval_data.jsonl) and stats.json, like a topics tree. Placeholders are not substituted: the
text is the user's own and may hold `${…}` on purpose (shell snippets)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubetune.dataformats.build import DataFile, build_conversations, format_stats, write_outputs
from kubetune.dataformats.rows import DATA_SUFFIXES, is_data_file
from kubetune.datasets_new.errors import DatasetError
from kubetune.datasets_new.pipeline import OutputPaths
from kubetune.datasets_new.stats import TokenizerError, load_tokenizer
from kubetune.jobs.basemodel import default_cache_dir
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.jobs.sources import base_model_folder, check_dataset, store_factory
from kubetune.sources import (
    HF_DATASETS,
    SourceError,
    hub_dataset,
    hub_dataset_commit,
    local_data_files,
    s3_data_files,
)
from kubetune.store.base import Download

log = logging.getLogger("kubetune.jobs.dataset")


@contextmanager
def dataset_errors_as_config_errors() -> Iterator[None]:
    """A bad dataset is the user's to fix: every problem on stderr, then one ConfigError line (exit 2, no retry)."""
    try:
        yield
    except DatasetError as error:
        print(error.report(), file=sys.stderr, flush=True)  # every problem, before the one-line reason
        raise ConfigError(error.summary()) from error
    except TokenizerError as error:
        raise ConfigError(f"token statistics: {error}") from error


def run_data_files(ctx: JobContext) -> None:
    spec = ctx.run.spec.dataset
    ctx.progress(message=f"reading {spec.format} data from {spec.uri}")
    check_dataset(ctx)  # the files still hold what the stage key was computed from
    files = _data_files(ctx, spec.uri)
    tokenizer = None
    if spec.token_stats:
        ctx.progress(message="resolving the base model's tokenizer for token statistics")
        try:
            tokenizer = load_tokenizer(base_model_folder(ctx))
        except TokenizerError as error:
            raise ConfigError(f"token statistics: {error}") from error
    if ctx.stop.is_set():
        raise Stopped("stopped before building the dataset")
    ctx.progress(message="validating and converting records")
    with dataset_errors_as_config_errors():
        build = build_conversations(spec.format, files, spec.fields, eval_split=spec.eval_split)
        stats = format_stats(build, spec.eval_split, 0, tokenizer)
    if ctx.stop.is_set():
        raise Stopped("stopped before publishing the dataset")
    outputs_dir = ctx.workdir / "outputs"
    shutil.rmtree(outputs_dir, ignore_errors=True)
    write_outputs(build, OutputPaths.in_folder(outputs_dir), stats, spec.eval_split)
    ctx.progress(message=f"publishing {len(build.train)} train / {len(build.eval)} eval samples",
                 samples=len(build.train) + len(build.eval))
    ctx.publish(outputs_dir, {"format": spec.format, "train": len(build.train), "eval": len(build.eval),
                              "duplicatesDropped": build.duplicates_dropped})


def _data_files(ctx: JobContext, uri: str) -> list[DataFile]:
    """The data files, local (downloaded first from S3 or the Hub), each named as the URI shows it."""
    try:
        if uri.startswith(HF_DATASETS):
            return _hub_files(ctx, uri)
        if not uri.startswith("s3://"):
            _, files = local_data_files(uri)
            return [DataFile(path, path.as_posix()) for _, path in files]
        store, objects = s3_data_files(uri, store_factory(ctx.run))
    except SourceError as error:
        raise ConfigError(str(error)) from error
    local = ctx.workdir / "data"
    shutil.rmtree(local, ignore_errors=True)
    downloads = [Download(o.key, local / o.key) for o in objects]
    store.get_files(downloads)
    log.info("downloaded %d dataset files from %s", len(downloads), uri)
    return [DataFile(Path(download.path), store.uri_for(download.key)) for download in downloads]


def _hub_files(ctx: JobContext, uri: str) -> list[DataFile]:
    """The data files of an hf:// dataset at the commit the sources step resolved (only .jsonl/.json/.parquet files
    under the URI's path are downloaded), from the Hugging Face cache when already there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, _, path = hub_dataset(uri)
    hub_cache = default_cache_dir() / "hf"
    resolved = ctx.run.sources
    commit = resolved.dataset.revision if resolved is not None and resolved.dataset.revision else None
    commit = commit or hub_dataset_commit(uri, hub_cache)
    patterns = [path] if is_data_file(path) else [f"{path}/*{suffix}" if path else f"*{suffix}"
                                                  for suffix in DATA_SUFFIXES]
    ctx.progress(message=f"downloading the data files of {repo_id} at {commit[:12]}")
    try:
        snapshot = Path(snapshot_download(repo_id, repo_type="dataset", revision=commit, allow_patterns=patterns,
                                          cache_dir=hub_cache, token=os.environ.get("HF_TOKEN") or None))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise ConfigError(f"spec.dataset.uri: {uri}: {' '.join(str(error).split())}") from error
    found = snapshot / path
    files = [found] if found.is_file() else sorted(
        file for file in found.rglob("*") if file.is_file() and is_data_file(file.relative_to(snapshot).as_posix()))
    if not files:
        raise ConfigError(f"spec.dataset.uri: no .jsonl, .json or .parquet files in {uri} at commit {commit}")
    log.info("read %d dataset files of %s at %s", len(files), repo_id, commit)
    return [DataFile(file, f"hf://datasets/{repo_id}@{commit}/{file.relative_to(snapshot).as_posix()}")
            for file in files]
