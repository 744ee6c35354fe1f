"""The stage graph and content keys.

A stage's key hashes everything that determines its output: the spec fields it reads, the upstream outputs'
digests and the stage's format version. Same key, same output: a stage whose key has a published output is skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.types import STAGES, FineTuneRunSpec

UPSTREAM: dict[str, tuple[str, ...]] = {
    "dataset": (),
    "train": ("dataset",),
    "merge": ("train",),
    "convert": ("merge",),
    "evaluate": ("merge", "convert"),
}

# Bump a stage's version when its code changes what it writes; every key from that stage on changes with it.
STAGE_VERSION: dict[str, int] = {"dataset": 1, "train": 1, "merge": 1, "convert": 1, "evaluate": 1}

KEY_PREFIX_LENGTH = 16


@dataclass(frozen=True)
class StageRef:
    """Where a stage's output lives for a given input key."""

    key: str
    prefix: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "prefix": self.prefix}


# Training fields that change how fast or where training runs, not what it learns: not part of the train key.
HOW_TO_TRAIN = frozenset({"device", "recomputeLayers", "compile"})


def stage_inputs(spec: FineTuneRunSpec, stage: str) -> dict[str, Any]:
    """The spec fields that affect a stage's output (camelCase, defaults filled)."""
    m = spec.to_manifest()
    if stage == "dataset":
        inputs = {"dataset": m["dataset"]}
        if spec.dataset.token_stats:
            inputs["baseModel"] = m["baseModel"]
        return inputs
    if stage == "train":
        training = {k: v for k, v in m["training"].items() if k not in HOW_TO_TRAIN}
        return {"training": training, "baseModel": m["baseModel"], "maxSeqLength": spec.dataset.max_seq_length}
    if stage == "merge":
        return {"merge": m["merge"], "baseModel": m["baseModel"]}
    if stage == "convert":
        return {"export": m["export"]}
    if stage == "evaluate":
        return {
            "evaluate": m["evaluate"],
            "stopSequences": m["training"]["stopSequences"],
            "placeholders": m["dataset"]["placeholders"],
        }
    raise ValueError(f"unknown stage {stage!r}")


def stage_key(spec: FineTuneRunSpec, stage: str, upstream_digests: Mapping[str, str]) -> str:
    """The content key of a stage, given the output digests of the stages it reads."""
    return _hash(stage, stage_inputs(spec, stage), upstream_digests)


def prefix_key(spec: FineTuneRunSpec, stage: str, upstream_digests: Mapping[str, str]) -> str:
    """The key naming the stage's store folder.

    Equal to the stage key except for train, whose folder leaves out `extraEpochs`: continuing a finished run
    writes into the same folder and resumes from its checkpoints.
    """
    inputs = stage_inputs(spec, stage)
    if stage == "train":
        inputs["training"] = {k: v for k, v in inputs["training"].items() if k != "extraEpochs"}
    return _hash(stage, inputs, upstream_digests)


def stage_prefix(namespace: str, run: str, stage: str, key: str) -> str:
    return f"{namespace}/{run}/{stage}/{key[:KEY_PREFIX_LENGTH]}"


def stage_ref(namespace: str, run: str, spec: FineTuneRunSpec, stage: str, digests: Mapping[str, str]) -> StageRef:
    """Key and prefix of `stage`, given the digests of (at least) its upstream stages."""
    missing = [up for up in UPSTREAM[stage] if up not in digests]
    if missing:
        raise ValueError(f"stage {stage} needs the outputs of {', '.join(missing)} first")
    upstream = {up: digests[up] for up in UPSTREAM[stage]}
    key = stage_key(spec, stage, upstream)
    return StageRef(key=key, prefix=stage_prefix(namespace, run, stage, prefix_key(spec, stage, upstream)))


def _hash(stage: str, inputs: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    payload = {"stage": stage, "version": STAGE_VERSION[stage], "inputs": inputs, "upstream": dict(sorted(upstream.items()))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


assert tuple(UPSTREAM) == STAGES
