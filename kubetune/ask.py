"""`kubetune ask`: one question to a GGUF in llama.cpp — a run's fine-tuned model, its base model (`--base`, for the
bundled model), or any GGUF file — with the GGUF's own chat template (`tokenizer.chat_template`, which a run's GGUF
carries from training; ChatML when it has none); `--base` uses the run's template where the run sets one.

llama.cpp is handed only a file whose GGUF header our reader validated, and it runs in a child process
(`python -m kubetune.llama.answer`): a model llama.cpp cannot load, or one that crashes it (an abort or a segfault on
a corrupt file), is one error line here instead of a dead interpreter.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kubetune.api.validate import FineTuneRun, load_runs
from kubetune.llama.answer import REPLY_PREFIX
from kubetune.local import STATE_DIR
from kubetune.stages import KEY_PREFIX_LENGTH
from kubetune.store import LocalStore, ManifestError, NotAnObjectError, open_store, read_manifest
from kubetune.store.verify import output_problem

_KEY_PREFIX = re.compile(f"[0-9a-f]{{{KEY_PREFIX_LENGTH}}}")  # a stage output's folder (stages.py)
PREFERRED_TYPES = ("q8_0", "f16", "bf16", "f32", "q6_k", "q5_k_m", "q4_k_m")


class UnusableModel(ValueError):
    """The GGUF cannot be asked: llama.cpp refused it, failed on it or crashed."""


@dataclass(frozen=True)
class Target:
    gguf: Path
    label: str
    stop: tuple[str, ...]
    template: str | None = None  # None: the GGUF's own (read once its header is checked)


def default_template() -> str:
    from kubetune.chat_templates import chatml_template

    return chatml_template()


def gguf_template(path: Path) -> str:
    """The GGUF's `tokenizer.chat_template`, ChatML when it has none."""
    from kubetune.llama.gguf_reader import read_gguf_header

    return read_gguf_header(path).string("tokenizer.chat_template") or default_template()


def base_target(run: FineTuneRun) -> Target:
    from kubetune.jobs.basemodel import BUNDLED_MODELS, BUNDLED_SCHEME

    uri = run.spec.base_model.uri
    if not uri.startswith(BUNDLED_SCHEME) or uri[len(BUNDLED_SCHEME):] not in BUNDLED_MODELS:
        raise ValueError(f"--base needs a bundled base model (this run's is {uri}); pass a GGUF file instead")
    from kubetune.chat_templates import spec_template

    gguf = BUNDLED_MODELS[uri[len(BUNDLED_SCHEME):]].locate()
    template = spec_template(run.spec.training.chat_template, open_store)  # None for source base: the GGUF's own
    return Target(gguf, f"base model {uri}", (), template.text if template is not None else None)


def run_target(run: FineTuneRun, store_uri: str | None) -> Target:
    """The GGUF this run's convert stage published in the local store (q8_0 first)."""
    from kubetune.status_view import load_status, status_path

    try:
        prefix = _convert_folder(load_status(run.name, run.namespace, STATE_DIR), run)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        # status.json is kubetune run's own file: one edited or cut short by hand says so, not a traceback.
        raise ValueError(f"{status_path(run.name, run.namespace, STATE_DIR)}: not a status kubetune run wrote "
                         f"({type(exc).__name__}); run `kubetune run` again to rewrite it") from None
    if prefix is None:
        raise ValueError(f"{run.namespace}/{run.name} has no GGUF yet: run `kubetune run` first")
    uri = store_uri or run.spec.storage.uri or str((STATE_DIR / "store").resolve())
    store = open_store(uri)
    folder = f"{run.namespace}/{run.name}/{prefix}"
    try:
        manifest = read_manifest(store, folder)
    except (ManifestError, NotAnObjectError) as error:
        raise ValueError(f"{error}; run `kubetune run` again to rebuild it") from None
    if manifest is None:
        raise ValueError(f"the convert output of {run.name} is missing from {uri}: run `kubetune run` again to "
                         "rebuild it")
    files = {f.path: f for f in manifest.files if f.path.endswith(".gguf")}
    if not files:
        raise ValueError(f"{store.uri_for(folder)}/manifest.json lists no GGUF: run `kubetune run` again")
    chosen = next((p for t in PREFERRED_TYPES for p in files if p.lower().endswith(f"{t}.gguf")), next(iter(files)))
    if isinstance(store, LocalStore):
        # Only the file the convert stage published, as it published it: never a link out of the store, never bytes
        # changed since (`kubetune run` would build them again rather than reuse them).
        problem = output_problem(store, folder, replace(manifest, files=(files[chosen],)))
        if problem is not None:
            raise ValueError(f"{problem}; run `kubetune run` again to rebuild it")
        local = store.regular_file(f"{folder}/{chosen}")
        return Target(local, f"fine-tuned {chosen}", tuple(run.spec.training.stop_sequences))
    raise ValueError(f"{chosen} is in an s3:// store; download it first or pass a local GGUF file")


def _convert_folder(document: Any, run: FineTuneRun) -> str | None:
    """`convert/<key prefix>`, the store folder of the run's published GGUFs, from its status (None: not converted
    yet); KeyError, TypeError or ValueError for a status kubetune run did not write."""
    status = document.get("status") or {}
    convert = (status.get("stages") or {}).get("convert") or {}
    outputs = [a for a in convert.get("outputs") or [] if a["name"].endswith(".gguf")]
    if not outputs:
        return None
    folder = outputs[0]["uri"].split(f"/{run.namespace}/{run.name}/", 1)[1].rsplit("/", 1)[0]
    stage, _, key = folder.partition("/")
    if stage != "convert" or not _KEY_PREFIX.fullmatch(key):  # never a folder elsewhere in (or out of) the store
        raise ValueError(folder)
    return folder


def check_model_gguf(path: Path) -> None:
    """Refuse, before llama.cpp sees it, a file that is not a well-formed GGUF model (InvalidGGUF, a ValueError;
    OSError when it cannot be read)."""
    from kubetune.llama.errors import InvalidGGUF
    from kubetune.llama.gguf_reader import read_gguf_header

    header = read_gguf_header(path)
    if header.string("general.architecture") is None:
        raise InvalidGGUF(f"{path}: the GGUF has no general.architecture, so it is not a model llama.cpp can run")
    if not header.tensors:
        raise InvalidGGUF(f"{path}: the GGUF holds no tensors (a vocabulary-only file?); pass a model GGUF")


def ask(target: Target, prompt: str, max_tokens: int) -> str:
    """The model's answer; raises UnusableModel when llama.cpp cannot load or run the file."""
    # A prompt from argv may carry undecodable bytes (as lone surrogates): llama.cpp takes UTF-8.
    prompt = prompt.encode("utf-8", "replace").decode("utf-8")
    template = target.template if target.template is not None else gguf_template(target.gguf)
    request = {"gguf": str(target.gguf), "prompt": prompt, "template": template, "max_tokens": max_tokens,
               "stop": list(target.stop)}
    # -P: started from a checkout's root, the child must not import its operator/ folder as the stdlib's operator.
    child = subprocess.run(
        [sys.executable, "-P", "-m", "kubetune.llama.answer"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    why = _llama_cpp_reason(child.stderr)
    for line in reversed(child.stdout.splitlines()):
        if line.startswith(REPLY_PREFIX):
            reply: dict[str, str] = json.loads(line[len(REPLY_PREFIX):])
            if "answer" in reply:
                return reply["answer"]
            raise UnusableModel(reply["error"] + why)
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name if -child.returncode in signal.valid_signals() else "a signal"
        raise UnusableModel(f"{target.gguf}: llama.cpp crashed ({name}) on this file{why}; the file is corrupt or "
                            "not a model this llama.cpp can run")
    raise UnusableModel(f"{target.gguf}: llama.cpp failed (exit {child.returncode}){why}")


def _llama_cpp_reason(stderr: str) -> str:
    """llama.cpp's own account of a failure in its log: an error or a failed assertion, if it gave one."""
    lines = stderr.splitlines()
    for marker in ("GGML_ASSERT", "error", "failed"):  # the most specific account first
        for line in reversed(lines):
            if marker in line.lower() or marker in line:
                return f": {' '.join(line.split())[:300]}"
    return ""


def resolve_target(path: Path, *, base: bool, store: str | None) -> Target:
    if path.suffix == ".gguf":
        check_model_gguf(path)
        return Target(path, path.name, ("</output>",))
    run = load_runs(path, relative_paths=True)[0]  # as `kubetune run` read it: ./ paths from its folder
    target = base_target(run) if base else run_target(run, store)
    check_model_gguf(target.gguf)
    return target
