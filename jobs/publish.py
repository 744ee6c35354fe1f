"""The publish stage: the gated GGUFs → an Ollama Modelfile, a Hugging Face layout folder and an OCI artifact in a
registry, as `spec.publish` asks.

Its output folder holds `Modelfile`, `huggingface/` (GGUFs + README.md model card), `artifact-lineage.json` (the
run's chain: every stage's input key and output digest, the resolved sources, the evaluate verdict) and
`oci-artifact.json` (reference and manifest digest of the push: the artifact's identity). The artifact's layers are
the GGUFs, the Modelfile and the lineage, each titled with its file name so `oras pull` writes them side by side.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from kubetune.api.publish import OciPublishSpec
from kubetune.jobs.errors import ConfigError
from kubetune.jobs.publish_formats import model_card, modelfile, ollama_template
from kubetune.jobs.publish_oci import (
    MANIFEST_MEDIA_TYPE,
    Layer,
    OciClient,
    credentials_from_env,
    split_repository,
)
from kubetune.jobs.runtime import JobContext
from kubetune.llama.errors import InvalidGGUF
from kubetune.llama.gguf_reader import read_gguf_header
from kubetune.store import content_digest, read_manifest

ARTIFACT_TYPE = "application/vnd.kubetune.model.v1"
GGUF_MEDIA_TYPE = "application/vnd.kubetune.model.gguf.v1"
MODELFILE_MEDIA_TYPE = "application/vnd.kubetune.model.modelfile.v1"
LINEAGE_MEDIA_TYPE = "application/vnd.kubetune.model.lineage.v1+json"
MODELFILE = "Modelfile"
HF_FOLDER = "huggingface"
LINEAGE_FILE = "artifact-lineage.json"
OCI_RECORD = "oci-artifact.json"
SOURCE_ANNOTATION = "org.opencontainers.image.source"


def run(ctx: JobContext) -> None:
    spec = ctx.run.spec
    publish = spec.publish
    ggufs_dir = ctx.workdir / "gguf"
    ctx.progress(message="fetching the GGUFs")
    convert = ctx.fetch("convert", ggufs_dir)
    ggufs: list[dict[str, Any]] = list(convert.metadata.get("files") or [])
    if not ggufs:
        raise ConfigError("the convert stage's output lists no GGUF files")
    out = ctx.workdir / "out"
    shutil.rmtree(out, ignore_errors=True)  # a retried attempt starts clean
    out.mkdir(parents=True)
    lineage = _lineage(ctx)
    (out / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    metadata: dict[str, Any] = {"ggufs": [g["name"] for g in ggufs]}
    if publish.ollama is not None:
        template = ollama_template(_chat_template(ggufs_dir / ggufs[0]["name"]))
        text = modelfile(ggufs[0]["name"], template, spec.training.stop_sequences, publish.ollama)
        (out / MODELFILE).write_text(text, encoding="utf-8")
        metadata["modelfile"] = MODELFILE
    if publish.hugging_face is not None:
        folder = out / HF_FOLDER
        folder.mkdir()
        for gguf in ggufs:
            _link_or_copy(ggufs_dir / gguf["name"], folder / gguf["name"])
        if (out / MODELFILE).exists():
            shutil.copyfile(out / MODELFILE, folder / MODELFILE)
        card = model_card(publish.hugging_face, base_model=_hub_id(spec.base_model.uri), ggufs=ggufs,
                          lineage=lineage, evaluation=lineage.get("evaluation"), has_modelfile=(out / MODELFILE).exists())
        (folder / "README.md").write_text(card, encoding="utf-8")
        metadata["huggingFace"] = f"{HF_FOLDER}/"
    if publish.oci is not None:
        ctx.progress(message=f"pushing to {publish.oci.repository}:{publish.oci.tag}")
        layers = [Layer(ggufs_dir / g["name"], GGUF_MEDIA_TYPE, g["name"]) for g in ggufs]
        if (out / MODELFILE).exists():
            layers.append(Layer(out / MODELFILE, MODELFILE_MEDIA_TYPE, MODELFILE))
        layers.append(Layer(out / LINEAGE_FILE, LINEAGE_MEDIA_TYPE, LINEAGE_FILE))
        record = push(publish.oci, layers, _annotations(ctx, convert.created_at, lineage))
        (out / OCI_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        metadata["oci"] = {"reference": record["reference"], "digest": record["digest"]}
        ctx.progress(message=f"pushed {record['reference']}@{record['digest']}")
    ctx.publish(out, metadata)


def push(spec: OciPublishSpec, layers: list[Layer], annotations: dict[str, str]) -> dict[str, Any]:
    """Push the artifact; the record written as oci-artifact.json."""
    ref = split_repository(spec.repository, spec.tag)
    credentials = credentials_from_env(ref.registry)
    with OciClient(ref.registry, ref.repository, plain_http=spec.plain_http, credentials=credentials) as client:
        digest, body = client.push(ref.tag, layers, artifact_type=ARTIFACT_TYPE, annotations=annotations)
    manifest = json.loads(body)
    return {"reference": str(ref), "digest": digest, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE,
            "size": len(body), "layers": manifest["layers"]}


def _annotations(ctx: JobContext, created: str, lineage: dict[str, Any]) -> dict[str, str]:
    """From the convert output, not the clock: the same GGUFs push the same manifest (the same digest)."""
    return {
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.revision": str(lineage["stages"]["convert"]["outputDigest"]),
        SOURCE_ANNOTATION: ctx.store.uri_for(ctx.run.stages["convert"].prefix),
        "dev.kubetune.run": f"{ctx.run.namespace}/{ctx.run.name}",
    }


def _lineage(ctx: JobContext) -> dict[str, Any]:
    """The chain from the stage manifests in the store (each stage's key and output digest), the resolved sources and
    the gate's verdict."""
    stages: dict[str, Any] = {}
    evaluation: str | None = None
    for name, ref in ctx.run.stages.items():
        if name == ctx.stage:
            continue
        manifest = read_manifest(ctx.store, ref.prefix)
        if manifest is None:
            continue
        stages[name] = {"inputKey": manifest.input_key, "outputDigest": content_digest(manifest),
                        "uri": ctx.store.uri_for(ref.prefix)}
        if name == "evaluate":
            evaluation = str(manifest.metadata.get("summary") or "") or None
    return {
        "run": f"{ctx.run.namespace}/{ctx.run.name}",
        "sources": ctx.run.sources.to_json() if ctx.run.sources is not None else None,
        "stages": stages,
        "evaluation": evaluation,
    }


def _chat_template(gguf: Path) -> str:
    """The template the GGUF carries (`tokenizer.chat_template`): the one it was trained and gated with."""
    try:
        template = read_gguf_header(gguf).string("tokenizer.chat_template")
    except InvalidGGUF as error:
        raise ConfigError(str(error)) from None
    if not template:
        raise ConfigError(f"{gguf.name} has no tokenizer.chat_template: spec.publish.ollama needs the chat template")
    return template


def _hub_id(uri: str) -> str | None:
    """`org/name` for the card's base_model when the base model came from the Hub."""
    if not uri.startswith("hf://"):
        return None
    return uri.removeprefix("hf://").split("@", 1)[0]


def _link_or_copy(source: Path, dest: Path) -> None:
    """A hard link where the file system allows it: a GGUF of many GB is not written twice to scratch."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
