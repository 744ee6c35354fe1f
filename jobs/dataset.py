"""The dataset stage: a topics tree in, train_data.jsonl (+ eval_data.jsonl) and stats.json published.

The tree comes from `spec.dataset.uri`: `bundled` (the starter dataset packaged in `kubetune.datasets_new`),
`s3://bucket/path` (downloaded) or a local folder (`file:///abs` or `/abs`). The build is the CLI's code
(`kubetune.datasets_new.pipeline`), not a copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kubetune.datasets_new.builder import BuildOptions
from kubetune.datasets_new.errors import DatasetError
from kubetune.datasets_new.files import is_inside
from kubetune.datasets_new.pipeline import OutputPaths, build_and_write
from kubetune.datasets_new.stats import TokenizerError
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.jobs.sources import base_model_folder, check_dataset
from kubetune.store import open_store

log = logging.getLogger("kubetune.jobs.dataset")

TOPICS_FOLDER = "topics"


def run(ctx: JobContext) -> None:
    spec = ctx.run.spec.dataset
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
    )
    outputs_dir = ctx.workdir / "outputs"
    shutil.rmtree(outputs_dir, ignore_errors=True)
    ctx.progress(message="validating and building samples")
    try:
        outcome = build_and_write(options, OutputPaths.in_folder(outputs_dir), tokenizer_dir, with_stats=True)
    except DatasetError as error:
        print(error.report(), file=sys.stderr, flush=True)  # every problem, before the one-line reason
        raise ConfigError(error.summary()) from error
    except TokenizerError as error:
        raise ConfigError(f"token statistics: {error}") from error
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


def _tree_root(ctx: JobContext, uri: str) -> Path:
    """A local folder holding the structure file and topics/, downloading it when it lives in a store."""
    if uri == "bundled":
        root = resources.files("kubetune.datasets_new")
        if not isinstance(root, Path):
            raise ConfigError("the bundled dataset is not installed as plain files; use spec.dataset.uri s3://…")
        return root
    if uri.startswith("s3://"):
        store = ctx.run.store
        local = ctx.workdir / "tree"
        shutil.rmtree(local, ignore_errors=True)
        objects = open_store(uri, endpoint=store.endpoint, region=store.region, path_style=store.path_style).get_dir(
            "", local)
        if not objects:
            raise ConfigError(f"spec.dataset.uri: no objects under {uri}")
        log.info("downloaded %d dataset files from %s", len(objects), uri)
        return local
    path = Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)
    # Checked again after decoding: a percent-encoded '..' (%2e%2e) passes a check of the URI as written.
    if not path.is_absolute() or ".." in path.parts or "\x00" in str(path):
        raise ConfigError(f"spec.dataset.uri: {uri} must name an absolute folder without '..'")
    if not path.is_dir():
        raise ConfigError(f"spec.dataset.uri: {uri} is not a folder")
    return path


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
