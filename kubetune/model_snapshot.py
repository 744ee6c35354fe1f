"""Base-model snapshots: an hf:// model downloaded once, kept in the run's store by content digest.

Only the files a stage loads are taken from the Hub (`MODEL_FILES`: safetensors weights and their index, the
config and generation config, tokenizer and chat-template files); a repository without safetensors weights is
refused rather than falling back to pickled `*.bin` ones. The model's digest is the folder digest of exactly those
files (kubetune/digests.py), so the same files from the Hub, a local folder or a pvc:// claim give the same stage keys.

Store layout (docs/contracts.md), beside the `<namespace>/<run>/` prefixes (no namespace name has a '_'):

    _models/sha256/<digest>/<files>                   the model files
    _models/sha256/<digest>/manifest.json             written last: the snapshot exists once it does
    _models/refs/hf/<org>/<name>/<commit>             the digest the files of that commit have

Writers are idempotent and never withdraw a manifest (the content under a digest cannot differ), so concurrent
writers are safe; readers check every file's sha256 and that the manifest's listing has the digest it is filed under.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kubetune.digests import DigestCache, file_lines, listing_digest
from kubetune.store import Store
from kubetune.store.base import Upload
from kubetune.store.errors import StoreError
from kubetune.store.hashing import SHA256_HEX
from kubetune.store.keys import join_key
from kubetune.store.manifest import MANIFEST_NAME, Manifest, ManifestFile, fetch, read_manifest

SNAPSHOTS = "_models/sha256"
HF_REFS = "_models/refs/hf"
SNAPSHOT_STAGE = "model"  # the manifest's stage field
# Top-level files a stage loads; anything else in a repository (pickled or ONNX/GGUF/Flax/TF weights, READMEs,
# images, subfolders) is never downloaded.
MODEL_FILES = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json",
    "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
)


class SnapshotError(ValueError):
    """A model cannot be taken from the Hub as configured, or a stored snapshot does not hold what it claims."""


def wanted_files(names: list[str]) -> list[str]:
    """The repository files a stage loads, sorted; refuses a repository without safetensors weights."""
    chosen = sorted(n for n in names if "/" not in n and any(fnmatch.fnmatchcase(n, p) for p in MODEL_FILES))
    if any(n.startswith("model") and n.endswith(".safetensors") for n in chosen):
        # transformers loads model.safetensors or the index's model-*-of-* shards; a second copy of the weights in
        # another layout (Mistral's consolidated.safetensors) would double the download.
        chosen = [n for n in chosen if n.startswith("model") or not n.endswith(".safetensors")]
    if not any(n.endswith(".safetensors") for n in chosen):
        raise SnapshotError("it has no *.safetensors weights (pickled *.bin, ONNX or GGUF weights are not loaded): "
                            "convert it to safetensors and push that, or put the converted folder on s3:// or pvc://")
    if "config.json" not in chosen:
        raise SnapshotError("it has no config.json: it is not a Hugging Face transformers model")
    return chosen


def model_files(folder: Path) -> list[tuple[str, Path]]:
    """(name, path) of the files of a downloaded Hub snapshot folder that belong to the model."""
    names = wanted_files([entry.name for entry in folder.iterdir() if entry.is_file()])
    return [(name, folder / name) for name in names]


def files_digest(folder: Path, cache: DigestCache | None = None) -> str:
    """The folder digest of the model files in `folder` (a Hub snapshot may hold others, downloaded before)."""
    return listing_digest(file_lines(folder, model_files(folder), cache))


def snapshot_prefix(digest: str) -> str:
    if not SHA256_HEX.fullmatch(digest):
        raise ValueError(f"a model digest is 64 lowercase hex characters, got {digest!r}")
    return f"{SNAPSHOTS}/{digest}"


def hf_ref_key(repo_id: str, commit: str) -> str:
    return f"{HF_REFS}/{repo_id}/{commit}"


def stored_hf_digest(store: Store, repo_id: str, commit: str) -> str | None:
    """The digest of the snapshot stored for `repo_id` at `commit`, if there is a complete one."""
    key = hf_ref_key(repo_id, commit)
    if not store.exists(key):
        return None
    digest = store.get_bytes(key).decode("ascii", errors="replace").strip()
    if not SHA256_HEX.fullmatch(digest) or read_manifest(store, snapshot_prefix(digest)) is None:
        return None  # a ref left by a writer that died before its snapshot was complete: write it again
    return digest


def publish_snapshot(store: Store, folder: Path, digest: str, *, repo_id: str, commit: str,
                     cache: DigestCache | None = None) -> None:
    """Store the model files of `folder` as the snapshot `digest` (unless it is there) and record the commit's ref.

    Not `publish`: that withdraws an existing manifest first, and a reader in that moment would download the model
    again; here the files go up (the same bytes as any other writer's) and the manifest after them."""
    prefix = snapshot_prefix(digest)
    if read_manifest(store, prefix) is None:
        files = model_files(folder)
        lines = file_lines(folder, files, cache)
        if listing_digest(lines) != digest:
            raise SnapshotError(f"the model files in {folder} changed while they were stored (digest {digest})")
        manifest = Manifest(stage=SNAPSHOT_STAGE, input_key=digest,
                            created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                            files=tuple(ManifestFile(name, size, sha256) for name, size, sha256 in lines))
        manifest.validate()
        store.put_files([Upload(join_key(prefix, name), path) for name, path in files])
        store.put_bytes(join_key(prefix, MANIFEST_NAME), manifest.to_bytes())
    store.put_bytes(hf_ref_key(repo_id, commit), f"{digest}\n".encode())


def fetch_snapshot(store: Store, digest: str, cache_dir: Path) -> Path | None:
    """The snapshot `digest` as a local folder under `cache_dir` (downloaded and checked once per machine), or None
    when the store has no complete snapshot of that digest."""
    target = cache_dir / "models" / "sha256" / digest
    if (target / "config.json").is_file():
        return target
    prefix = snapshot_prefix(digest)
    manifest = read_manifest(store, prefix)
    if manifest is None:
        return None
    check_listing(manifest, digest, store.uri_for(prefix))
    build_atomically(target, lambda tmp: _fetch_into(store, prefix, tmp, manifest))
    return target


def check_listing(manifest: Manifest, digest: str, where: str) -> None:
    """The manifest must list files whose folder digest is the one it is filed under (its files are checked
    against the manifest as they are downloaded)."""
    listed = listing_digest((f.path, f.size, f.sha256) for f in manifest.files)
    if manifest.stage != SNAPSHOT_STAGE or listed != digest:
        raise SnapshotError(f"the model snapshot at {where} lists files of digest {listed}, not {digest}: remove it "
                            "and run again to store it afresh")


def _fetch_into(store: Store, prefix: str, tmp: Path, manifest: Manifest) -> None:
    try:
        fetch(store, prefix, tmp, manifest)
    except StoreError as error:
        raise SnapshotError(f"the model snapshot at {store.uri_for(prefix)} cannot be read: {error}") from None


def cached_hub_folder(hub_cache: Path, repo_id: str, commit: str) -> Path | None:
    """The Hub snapshot folder of `repo_id` at `commit` in a local Hugging Face cache, when it holds the model files."""
    folder = hub_cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    if not folder.is_dir():
        return None
    try:
        model_files(folder)
    except SnapshotError:
        return None
    return folder


def hub_download(repo_id: str, commit: str, hub_cache: Path) -> Path:
    """The Hub snapshot folder of `repo_id` at `commit` with the model files downloaded (only those: the listing
    is asked first), from the local Hugging Face cache alone when the Hub is off (`HF_HUB_OFFLINE`)."""
    import httpx
    from huggingface_hub import HfApi, is_offline_mode, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    # Read at each call, not at import as huggingface_hub's constants are: a job or test may set them later.
    token, endpoint = os.environ.get("HF_TOKEN") or None, os.environ.get("HF_ENDPOINT") or None
    try:
        if is_offline_mode():
            folder = Path(snapshot_download(repo_id, revision=commit, cache_dir=hub_cache, local_files_only=True))
        else:
            info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=commit)
            names = wanted_files([sibling.rfilename for sibling in info.siblings or []])
            folder = Path(snapshot_download(repo_id, revision=commit, cache_dir=hub_cache, allow_patterns=names,
                                            token=token, endpoint=endpoint))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise SnapshotError(f"commit {commit} is not in the local Hugging Face cache {hub_cache} and HF_HUB_OFFLINE "
                            "is set: allow Hub access, or download it there first") from None
    except HfHubHTTPError as error:
        raise SnapshotError(f"the Hub refused it: {' '.join(str(error).split())}") from None
    except (httpx.HTTPError, OSError) as error:
        raise SnapshotError(f"the Hub cannot be reached ({type(error).__name__}: "
                            f"{' '.join(str(error).split()) or 'no answer'})") from None
    model_files(folder)  # the files are all there (offline, the cache may hold a partial download)
    return folder


def build_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """Build a folder in a temporary sibling and rename it into place; a concurrent builder that wins is fine."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process finished first: its folder is complete (it was renamed into place), use it.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
