"""The dataset stage for data files (`spec.dataset.format` messages, sharegpt or alpaca): the file or folder of
`spec.dataset.uri` (local, or downloaded from `s3://`) read into conversations, split, counted and published as
train_data.jsonl (+ eval_data.jsonl) and stats.json, like a topics tree. Placeholders are not substituted: the
text is the user's own and may hold `${…}` on purpose (shell snippets)."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from kubetune.dataformats.build import DataFile, build_conversations, format_stats, write_outputs
from kubetune.datasets_new.errors import DatasetError
from kubetune.datasets_new.pipeline import OutputPaths
from kubetune.datasets_new.stats import TokenizerError, load_tokenizer
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.jobs.sources import base_model_folder, check_dataset, store_factory
from kubetune.sources import SourceError, local_data_files, s3_data_files
from kubetune.store.base import Download

log = logging.getLogger("kubetune.jobs.dataset")


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
    try:
        build = build_conversations(spec.format, files, spec.fields, eval_split=spec.eval_split)
        stats = format_stats(build, spec.eval_split, 0, tokenizer)
    except DatasetError as error:
        print(error.report(), file=sys.stderr, flush=True)  # every problem, before the one-line reason
        raise ConfigError(error.summary()) from error
    except TokenizerError as error:
        raise ConfigError(f"token statistics: {error}") from error
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
    """The data files, local (downloaded first from S3), each named as the URI shows it."""
    try:
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
