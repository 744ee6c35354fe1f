"""`lineage.json`: a human-readable record, beside every stage output, of what made it.

Written by `JobContext.publish` into the output folder just before the upload, so every stage (and the sources step)
has one and no stage writes its own. It names the run, the stage and its key, the resolved sources (dataset tree,
base model URI, revision and digest, chat template), the spec fields the stage reads (the inputs of its key, camelCase),
the content digests of the upstream outputs it read, the library versions, the image and the host.

It carries a time, a host name and the run's uid, so two identical re-runs write different lineage files: the output's
content digest leaves `lineage.json` out (kubetune/store/manifest.py), and the keys of later stages stay equal.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.stages import UPSTREAM, stage_inputs
from kubetune.store import LINEAGE_NAME, content_digest, manifest_digest, read_manifest

if TYPE_CHECKING:  # runtime.py calls write_lineage from JobContext.publish
    from kubetune.jobs.runtime import JobContext

LINEAGE_SCHEMA = 1
IMAGE_ENV = "KUBETUNE_IMAGE"  # the job image, when the executor tells it
# Distributions whose versions decide what a stage writes; absent ones (bitsandbytes on a CPU image) are left out.
LIBRARIES = ("kubetune", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "tokenizers",
             "gguf", "llama_cpp_python")
# Stages whose output comes out of llama.cpp (convert checks its GGUF with it, evaluate answers with it).
LLAMA_CPP_STAGES = frozenset({"convert", "evaluate"})


def lineage_record(ctx: JobContext) -> dict[str, Any]:
    """The lineage of the output `ctx`'s stage is about to publish."""
    run = ctx.run
    record: dict[str, Any] = {
        "schema": LINEAGE_SCHEMA,
        "run": {"namespace": run.namespace, "name": run.name, "uid": run.uid},
        "stage": ctx.stage,
        "key": ctx.key,
        "prefix": ctx.prefix,
        "store": run.store.uri,
        "sources": run.sources.to_json() if run.sources is not None else None,
        "parameters": _parameters(ctx),
        "upstream": _upstream(ctx),
        "versions": library_versions(with_llama_cpp=ctx.stage in LLAMA_CPP_STAGES),
        "image": os.environ.get(IMAGE_ENV),
        "host": host_summary(),
        "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return record


def write_lineage(ctx: JobContext, outputs: Path) -> Path:
    """Write `lineage.json` into the output folder (replacing one a resumed attempt left) and return its path."""
    path = outputs / LINEAGE_NAME
    path.write_text(json.dumps(lineage_record(ctx), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _parameters(ctx: JobContext) -> dict[str, Any]:
    """The spec fields the stage reads, as its key hashes them; the whole spec where the key's inputs are unknown
    (the sources step, or a run config written by hand without resolved sources)."""
    if ctx.stage in UPSTREAM and ctx.run.sources is not None:
        return stage_inputs(ctx.run.spec, ctx.stage, ctx.run.sources)
    return ctx.run.spec.to_manifest()


def _upstream(ctx: JobContext) -> dict[str, dict[str, str]]:
    """Key and digests of each upstream output the stage read."""
    found: dict[str, dict[str, str]] = {}
    for stage in UPSTREAM.get(ctx.stage, ()):
        ref = ctx.run.stages.get(stage)
        manifest = read_manifest(ctx.store, ref.prefix) if ref is not None else None
        if ref is None or manifest is None:
            continue
        found[stage] = {"key": ref.key, "prefix": ref.prefix, "contentDigest": content_digest(manifest),
                        "manifestDigest": manifest_digest(manifest)}
    return found


def library_versions(*, with_llama_cpp: bool = False) -> dict[str, str]:
    """Installed versions of the libraries that shape outputs, plus python; with llama.cpp's build flags if asked."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if with_llama_cpp:
        build = _llama_cpp_build()
        if build:
            versions["llama.cpp"] = build
    return versions


def _llama_cpp_build() -> str | None:
    """llama.cpp's system info line (CPU features and backends it was built with), from the bundled library."""
    try:
        import llama_cpp
    except (ImportError, OSError):  # not installed, or its shared library does not load here
        return None
    info = llama_cpp.llama_print_system_info()
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    return " ".join(text.split()) or None


def host_summary() -> dict[str, Any]:
    """Where the stage ran: host, platform, CPUs and, when torch is loaded already, its accelerators."""
    host: dict[str, Any] = {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")  # never imported for this: the dataset stage and the sources step run without it
    if torch is not None and torch.cuda.is_available():
        host["cuda"] = torch.version.cuda
        host["devices"] = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return host
