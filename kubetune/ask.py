"""`kubetune ask`: one question to a GGUF in llama.cpp, with kubetune's chat template — a run's fine-tuned model, its
base model (`--base`, for the bundled model), or any GGUF file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubetune.api.validate import FineTuneRun, load_runs
from kubetune.local import STATE_DIR
from kubetune.store import open_store, read_manifest

PREFERRED_TYPES = ("q8_0", "f16", "bf16", "f32", "q6_k", "q5_k_m", "q4_k_m")


@dataclass(frozen=True)
class Target:
    gguf: Path
    label: str
    stop: tuple[str, ...]


def default_template() -> str:
    from importlib.resources import files

    return files("kubetune.templates").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def base_target(run: FineTuneRun) -> Target:
    from kubetune.jobs.basemodel import BUNDLED_MODELS, BUNDLED_SCHEME

    uri = run.spec.base_model.uri
    if not uri.startswith(BUNDLED_SCHEME) or uri[len(BUNDLED_SCHEME):] not in BUNDLED_MODELS:
        raise ValueError(f"--base needs a bundled base model (this run's is {uri}); pass a GGUF file instead")
    gguf = BUNDLED_MODELS[uri[len(BUNDLED_SCHEME):]].locate()
    return Target(gguf, f"base model {uri}", ())


def run_target(run: FineTuneRun, store_uri: str | None) -> Target:
    """The GGUF this run's convert stage published in the local store (q8_0 first)."""
    from kubetune.status_view import load_status

    status = load_status(run.name, run.namespace, STATE_DIR).get("status") or {}
    convert = (status.get("stages") or {}).get("convert") or {}
    outputs = [a for a in convert.get("outputs") or [] if a["name"].endswith(".gguf")]
    if not outputs:
        raise ValueError(f"{run.namespace}/{run.name} has no GGUF yet: run `kubetune run` first")
    uri = store_uri or run.spec.storage.uri or str((STATE_DIR / "store").resolve())
    store = open_store(uri)
    prefix = outputs[0]["uri"].split(f"/{run.namespace}/{run.name}/", 1)[1].rsplit("/", 1)[0]
    manifest = read_manifest(store, f"{run.namespace}/{run.name}/{prefix}")
    if manifest is None:
        raise ValueError(f"the convert output of {run.name} is missing from {uri}")
    files = {f.path: f for f in manifest.files if f.path.endswith(".gguf")}
    chosen = next((p for t in PREFERRED_TYPES for p in files if p.lower().endswith(f"{t}.gguf")), next(iter(files)))
    local = Path(store.uri_for(f"{run.namespace}/{run.name}/{prefix}/{chosen}").removeprefix("file://"))
    if not local.is_file():
        raise ValueError(f"{chosen} is in an s3:// store; download it first or pass a local GGUF file")
    return Target(local, f"fine-tuned {chosen}", tuple(run.spec.training.stop_sequences))


def ask(target: Target, prompt: str, max_tokens: int) -> str:
    from kubetune.llama.checks import generate_chat, load

    llm = load(target.gguf, n_ctx=2048)
    try:
        return generate_chat(llm, [{"role": "user", "content": prompt}], default_template(), stop=target.stop,
                             max_tokens=max_tokens).strip()
    finally:
        llm.close()


def resolve_target(path: Path, *, base: bool, store: str | None) -> Target:
    if path.suffix == ".gguf":
        return Target(path, path.name, ("</output>",))
    run = load_runs(path)[0]
    return base_target(run) if base else run_target(run, store)
