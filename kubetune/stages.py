"""The stage graph and content keys.

A stage's key hashes everything that determines its output: the spec fields it reads, the content of the sources it
reads (resolved digests, sources.py), the upstream outputs' content digests and the stage's format version. No URI
goes into a key: what a URI points to can change, and the same content elsewhere is the same input. Same key, same
output: a stage whose key has a published output is skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.types import STAGES, FineTuneRunSpec
from kubetune.sources import SOURCES, Sources

UPSTREAM: dict[str, tuple[str, ...]] = {
    "dataset": (),
    "train": ("dataset",),
    "merge": ("train",),
    "convert": ("merge",),
    "evaluate": ("merge", "convert"),
    "publish": ("convert", "evaluate"),  # evaluate when enabled: only a gated GGUF is published
}

# Bump a stage's version when its code changes what it writes; every key from that stage on changes with it.
# Version 2: keys hash source content and upstream content digests instead of URIs and manifest bytes.
# Version 3 (train, evaluate): the held-out eval loss and its gate.
STAGE_VERSION: dict[str, int] = {"dataset": 2, "train": 4, "merge": 2, "convert": 2, "evaluate": 3, "publish": 1}

KEY_PREFIX_LENGTH = 16

# The run annotation whose new value makes the operator resolve the sources again (content changed, spec did not).
REFRESH_ANNOTATION = "kubetune.dev/refresh"


def enabled_stages(spec: FineTuneRunSpec) -> tuple[str, ...]:
    """The stages this spec runs: evaluate unless `evaluate.enabled` is false, publish when `spec.publish` asks for
    something."""
    return tuple(s for s in STAGES if (s != "evaluate" or spec.evaluate.enabled)
                 and (s != "publish" or spec.publish.requested))


def upstream_stages(spec: FineTuneRunSpec, stage: str) -> tuple[str, ...]:
    """The stages whose outputs `stage` reads under this spec (a disabled evaluate is not waited for)."""
    enabled = enabled_stages(spec)
    return tuple(up for up in UPSTREAM[stage] if up in enabled)


@dataclass(frozen=True)
class StageRef:
    """Where a stage's output lives for a given input key."""

    key: str
    prefix: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "prefix": self.prefix}


# Training fields that change how fast or where training runs, not what it learns: not part of the train key.
HOW_TO_TRAIN = frozenset({"device", "recomputeLayers", "activationOffload", "compile"})


def stage_inputs(spec: FineTuneRunSpec, stage: str, sources: Sources) -> dict[str, Any]:
    """What affects a stage's output: spec fields (camelCase, defaults filled) and source digests."""
    m = spec.to_manifest()
    model, template = sources.base_model.digest, sources.template.digest
    if stage == "dataset":
        dataset = {k: v for k, v in m["dataset"].items() if k != "uri"}
        inputs: dict[str, Any] = {"dataset": dataset, "tree": sources.dataset.digest}
        if spec.dataset.token_stats:
            inputs["baseModel"] = model  # its tokenizer counts the tokens
        return inputs
    if stage == "train":
        training = {k: v for k, v in m["training"].items() if k not in HOW_TO_TRAIN}
        return {"training": training, "baseModel": model, "template": template,
                "maxSeqLength": spec.dataset.max_seq_length}
    if stage == "merge":
        return {"merge": m["merge"], "baseModel": model}
    if stage == "convert":
        return {"export": m["export"]}  # the template travels in the merged model's tokenizer files
    if stage == "evaluate":
        return {
            "evaluate": m["evaluate"],
            "stopSequences": m["training"]["stopSequences"],
            "placeholders": m["dataset"]["placeholders"],
            "template": template,
        }
    if stage == "publish":
        publish = m["publish"]
        if "oci" in publish:  # who pushes does not change what is pushed
            publish["oci"] = {k: v for k, v in publish["oci"].items() if k != "credentialsSecret"}
        # The Modelfile carries the stop sequences; the GGUFs and their template come through the upstream digests.
        return {"publish": publish, "stopSequences": m["training"]["stopSequences"]}
    raise ValueError(f"unknown stage {stage!r}")


def stage_key(spec: FineTuneRunSpec, stage: str, upstream_digests: Mapping[str, str], sources: Sources) -> str:
    """The content key of a stage, given the content digests of the stages it reads and the resolved sources."""
    return _hash(stage, stage_inputs(spec, stage, sources), upstream_digests)


def prefix_key(spec: FineTuneRunSpec, stage: str, upstream_digests: Mapping[str, str], sources: Sources) -> str:
    """The key naming the stage's store folder.

    Equal to the stage key except for train, whose folder leaves out `extraEpochs`: continuing a finished run
    writes into the same folder and resumes from its checkpoints.
    """
    inputs = stage_inputs(spec, stage, sources)
    if stage == "train":
        inputs["training"] = {k: v for k, v in inputs["training"].items() if k != "extraEpochs"}
    return _hash(stage, inputs, upstream_digests)


def stage_prefix(namespace: str, run: str, stage: str, key: str) -> str:
    return f"{namespace}/{run}/{stage}/{key[:KEY_PREFIX_LENGTH]}"


def stage_ref(namespace: str, run: str, spec: FineTuneRunSpec, stage: str, digests: Mapping[str, str],
              sources: Sources) -> StageRef:
    """Key and prefix of `stage`, given the content digests of (at least) its upstream stages."""
    missing = [up for up in upstream_stages(spec, stage) if up not in digests]
    if missing:
        raise ValueError(f"stage {stage} needs the outputs of {', '.join(missing)} first")
    upstream = {up: digests[up] for up in upstream_stages(spec, stage)}
    key = stage_key(spec, stage, upstream, sources)
    return StageRef(key=key, prefix=stage_prefix(namespace, run, stage, prefix_key(spec, stage, upstream, sources)))


def resolution_ref(namespace: str, run: str, spec: FineTuneRunSpec, *, uid: str, image: str, refresh: str
                   ) -> StageRef:
    """Where the operator's sources Job writes, keyed by what it resolves: the source fields of the spec (dataset,
    base model, `training.chatTemplate`), the run (uid), the image it runs in (it holds the template and the bundled
    data and model) and the refresh annotation.

    The key leaves out the rest of the spec, the generation included: an edit of other training fields or `suspend`
    resolves nothing again (a suspend must reach the running Job at once, not wait behind a resolution). Content
    that changed behind an unchanged URI is picked up when `kubetune.dev/refresh` gets a new value; a dataset
    changed since it was resolved also fails its stage with that advice (jobs/sources.py).
    """
    m = spec.to_manifest()
    fields = {"dataset": {"uri": m["dataset"]["uri"], "structure": m["dataset"]["structure"]},
              "baseModel": {k: v for k, v in m["baseModel"].items() if k != "tokenSecret"},
              "chatTemplate": m["training"]["chatTemplate"],  # a file or inline text is resolved there too
              "storage": m["storage"], "uid": uid, "image": image, "refresh": refresh}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return StageRef(key=key, prefix=stage_prefix(namespace, run, SOURCES, key))


def _hash(stage: str, inputs: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    payload = {"stage": stage, "version": STAGE_VERSION[stage], "inputs": inputs, "upstream": dict(sorted(upstream.items()))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


assert tuple(UPSTREAM) == STAGES
