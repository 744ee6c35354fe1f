"""The dataset stage: a topics tree in, train_data.jsonl (+ eval_data.jsonl) and stats.json published.

The tree comes from `spec.dataset.uri`: `bundled` (the starter dataset packaged in `kubetune.datasets_new`),
`s3://bucket/path` (downloaded) or a local folder (`file:///abs` or `/abs`). The build is the CLI's code
(`kubetune.datasets_new.pipeline`), not a copy. Another `spec.dataset.format` (messages, sharegpt, alpaca) reads
data files instead (jobs/dataset_files.py).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from kubetune.api.types import DatasetSpec
from kubetune.datasets_new.builder import BuildOptions, BuiltRecord
from kubetune.datasets_new.files import is_inside
from kubetune.datasets_new.pipeline import OutputPaths, build_and_write
from kubetune.jobs.dataset_files import dataset_errors_as_config_errors, run_data_files
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.jobs.sources import base_model_folder, check_dataset, store_factory
from kubetune.sources import SourceError, dataset_tree

log = logging.getLogger("kubetune.jobs.dataset")

TOPICS_FOLDER = "topics"


def run(ctx: JobContext) -> None:
    spec = ctx.run.spec.dataset
    if spec.format != "tree":
        run_data_files(ctx)
        return
    ctx.progress(message=f"reading the topics tree from {spec.uri}")
    check_dataset(ctx)  # the tree still holds what the stage key was computed from
    root = _tree_root(ctx, spec.uri)
    tokenizer_dir = _base_model_folder(ctx) if spec.token_stats else None
    if ctx.stop.is_set():
        raise Stopped("stopped before building the dataset")
    options = BuildOptions(
        structure_path=_inside_tree(root, spec.structure, "spec.dataset.structure"),
        topics_dir=_inside_tree(root, TOPICS_FOLDER, "spec.dataset.uri"),
        placeholders=dict(spec.placeholders),
        categories=tuple(spec.categories),
        eval_split=spec.eval_split,
        placeholders_origin="spec.dataset.placeholders",
        categories_origin="spec.dataset.categories:",
    )
    outputs_dir = ctx.workdir / "outputs"
    shutil.rmtree(outputs_dir, ignore_errors=True)
    ctx.progress(message="validating and building samples")
    with dataset_errors_as_config_errors():
        outcome = build_and_write(options, OutputPaths.in_folder(outputs_dir), tokenizer_dir, with_stats=True)
    if not outcome.result.train:
        shutil.rmtree(outputs_dir, ignore_errors=True)  # nothing of a refused dataset stays behind
        raise ConfigError(_nothing_to_train(outcome.result.eval, spec))
    if ctx.stop.is_set():
        raise Stopped("stopped before publishing the dataset")
    result = outcome.result
    ctx.progress(message=f"publishing {len(result.train)} train / {len(result.eval)} eval samples",
                 samples=len(result.train) + len(result.eval))
    ctx.publish(outputs_dir, {
        "train": len(result.train),
        "eval": len(result.eval),
        "duplicatesDropped": result.report.duplicates_dropped,
        "categories": sorted({category for category, _ in result.report.per_subcategory}),
    })


def _nothing_to_train(held_out: list[BuiltRecord], spec: DatasetSpec) -> str:
    """Why a tree that built gives the train stage no record (it would fail there, on a file the user never wrote)."""
    if held_out:
        return (f"spec.dataset.evalSplit: every one of the {len(held_out)} sample(s) went to the eval split "
                f"({spec.eval_split:g}); lower it or add samples")
    selected = f" in spec.dataset.categories ({', '.join(spec.categories)})" if spec.categories else ""
    return (f"spec.dataset.uri: {spec.uri} holds no samples{selected}: every topic file is missing or empty ([]); "
            "add samples to a topic file")


def _tree_root(ctx: JobContext, uri: str) -> Path:
    """A local folder holding the structure file and topics/, downloading it when it lives in a store."""
    try:
        root = dataset_tree(uri)
    except SourceError as error:
        raise ConfigError(str(error)) from error
    if root is not None:
        return root
    local = ctx.workdir / "tree"
    shutil.rmtree(local, ignore_errors=True)
    objects = store_factory(ctx.run)(uri).get_dir("", local)
    if not objects:
        raise ConfigError(f"spec.dataset.uri: no objects under {uri}")
    log.info("downloaded %d dataset files from %s", len(objects), uri)
    return local


def _inside_tree(root: Path, relative: str, field: str) -> Path:
    """`root / relative`, refused when it (or a symlink on the way) leads outside the tree: a dataset never reads
    beyond its own folder."""
    path = root / relative
    if ".." in Path(relative).parts or not is_inside(path, os.path.realpath(root)):
        raise ConfigError(f"{field}: {relative} leads outside the dataset folder {root}; copy it into the tree")
    return path


def _base_model_folder(ctx: JobContext) -> Path:
    """The base model's folder (its tokenizer.json counts tokens the way training will)."""
    ctx.progress(message="resolving the base model's tokenizer for token statistics")
    return base_model_folder(ctx)  # its tokenizer counts the tokens the stage key was computed for
