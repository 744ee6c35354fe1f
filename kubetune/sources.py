"""What the stages read, resolved to content: the dataset tree, the chat template and the base model.

A URI alone is never a key (ARCHITECTURE decision 3): `hf://org/name@main`, an S3 prefix or a local folder can point
at other content tomorrow. Resolution turns each into a digest of what it holds now, and the stage keys hash those
digests (stages.py), so editing any input re-runs exactly the stages that read it.

- dataset: the files the builder reads (the structure file and `topics/`): a local tree (`bundled` is the one
  packaged with kubetune) by each file's sha256, an `s3://` prefix by its objects' ETags. Another format: its data
  file, or the .jsonl/.json/.parquet files under its folder or prefix, the same way; `hf://datasets/org/name[@rev]`
  by the commit the revision points to.
- template: the text of `spec.training.chatTemplate` (ChatML as installed with kubetune, a file or inline) by sha256,
  checked to parse and render; `base` (the base model's own) by the base model's digest.
- base model: `bundled://` by the GGUF file's sha256, a local folder by its folder digest, `s3://` by
  `spec.baseModel.sha256` when given (the folder digest, checked when fetched) else its objects' ETags, and
  `hf://org/name@revision` by the folder digest of the model files at the commit the revision points to
  (model_snapshot.py: downloaded once, kept in the run's store by digest), `pvc://claim/path` by its folder digest.

`kubetune run` resolves in-process on every invocation; the operator, which cannot read the jobs' data sources,
runs `python -m kubetune.jobs sources` as a Job of its own and reads its `sources.json` (docs/contracts.md).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from kubetune.api import types as t
from kubetune.api.chat_template import ChatTemplateSpec
from kubetune.bundled import BUNDLED_MODELS, BUNDLED_SCHEME, BaseModelError
from kubetune.dataformats.rows import is_data_file
from kubetune.datasets_new.errors import printable
from kubetune.digests import DigestCache, file_lines, folder_digest, listing_digest
from kubetune.model_snapshot import SnapshotError, files_digest, hub_download, publish_snapshot, stored_hf_digest
from kubetune.store import Store
from kubetune.store.factory import local_uri_path
from kubetune.store.hashing import SHA256_HEX
from kubetune.store.keys import validate_key

SOURCES = "sources"  # the step before the stages that resolves what they read
SOURCES_FILE = "sources.json"
TOPICS_FOLDER = "topics"
COMMIT = re.compile(r"[0-9a-f]{40}")
HF_DATASETS = "hf://datasets/"
# A revision in a dataset URI has no '/' (the path follows it); a branch whose name has one is given by commit.
_HF_DATASET = re.compile(r"hf://datasets/(?P<repo>[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*)"
                         r"(@(?P<revision>[-A-Za-z0-9_]+([.][-A-Za-z0-9_]+)*))?(?P<path>/.*)?")
PVC_SCHEME = "pvc://"
PVC_ROOT_ENV = "KUBETUNE_PVC_ROOT"  # set by the operator in the pods that mount a pvc:// model's claim
MAX_CONFIG_BYTES = 16 << 20  # a model's config.json: a few KiB in every model there is

StoreFactory = Callable[[str], Store]


class SourceError(ValueError):
    """A source cannot be resolved as configured (the message names the spec field)."""

    def __init__(self, message: str) -> None:
        # One line whatever the paths in it hold: a U+0085 or newline in a folder name must not split the message.
        super().__init__(printable(message))


@dataclass(frozen=True)
class ResolvedSource:
    """One input as resolved: where it is and what it held then."""

    uri: str
    digest: str  # sha256 (hex) of its content listing
    revision: str | None = None  # the commit an hf:// revision pointed to

    def to_json(self) -> dict[str, str]:
        out = {"uri": self.uri, "digest": self.digest}
        if self.revision is not None:
            out["revision"] = self.revision
        return out

    @classmethod
    def from_json(cls, data: Any, name: str = "source") -> ResolvedSource:
        """Raises ValueError (TypeError for a wrong type) naming `name` (`sources.dataset`, say)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("uri"), str):
            raise TypeError(f"{name} must be a JSON object with a string uri")
        digest = data.get("digest")
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            raise ValueError(f"{name}.digest must be 64 lowercase hex characters, got {digest!r:.80}")
        revision = data.get("revision")
        return cls(uri=data["uri"], digest=digest, revision=None if revision is None else str(revision))


@dataclass(frozen=True)
class Sources:
    """What a run's stages read, by content."""

    dataset: ResolvedSource
    template: ResolvedSource
    base_model: ResolvedSource

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset.to_json(), "template": self.template.to_json(),
                "baseModel": self.base_model.to_json()}

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: Any) -> Sources:
        if not isinstance(data, Mapping):
            raise TypeError("sources must be a JSON object")
        return cls(dataset=ResolvedSource.from_json(data.get("dataset"), "sources.dataset"),
                   template=ResolvedSource.from_json(data.get("template"), "sources.template"),
                   base_model=ResolvedSource.from_json(data.get("baseModel"), "sources.baseModel"))


def resolve_sources(spec: t.FineTuneRunSpec, *, store_factory: StoreFactory, cache: DigestCache,
                    hub_cache: Path, snapshots: Store | None = None) -> Sources:
    """Resolve every source of `spec`; raises `SourceError` naming the field when one cannot be. `snapshots`: the
    run's store, where an hf:// model is kept by digest (model_snapshot.py) and looked up before the Hub."""
    dataset = dataset_source(spec.dataset, store_factory, cache, hub_cache)
    base_model = base_model_source(spec.base_model, store_factory, cache, hub_cache, snapshots)
    return Sources(dataset=dataset, template=template_source(spec.training.chat_template, base_model, store_factory),
                   base_model=base_model)


# --- dataset ------------------------------------------------------------------------------------------------------


def dataset_tree(uri: str) -> Path | None:
    """The local folder of a dataset URI (an existing one), or None for one in a store."""
    if uri == "bundled":
        root = resources.files("kubetune.datasets_new")
        if not isinstance(root, Path):
            raise SourceError("spec.dataset.uri: the bundled dataset is not installed as plain files; use s3://…")
        return root
    if uri.startswith("s3://"):
        return None
    if uri.startswith(PVC_SCHEME):
        path = pvc_folder(uri, "spec.dataset.uri")
        if not _looks(path.is_dir, "spec.dataset.uri"):
            raise SourceError(f"spec.dataset.uri: {path} (from {uri}) is not a folder")
        return path
    path = _local_dataset_path(uri, "folder")
    if not _looks(path.is_dir, "spec.dataset.uri"):
        raise SourceError(f"spec.dataset.uri: {path} is not a folder")
    return path


def dataset_source(dataset: t.DatasetSpec, store_factory: StoreFactory, cache: DigestCache | None = None,
                   hub_cache: Path | None = None) -> ResolvedSource:
    if dataset.uri.startswith(HF_DATASETS):
        repo_id, _, path = hub_dataset(dataset.uri)
        commit = hub_dataset_commit(dataset.uri, hub_cache)
        digest = hashlib.sha256(f"hf dataset {repo_id} {commit} {path}".encode()).hexdigest()
        return ResolvedSource(dataset.uri, digest, revision=commit)
    if dataset.format != "tree":
        return ResolvedSource(dataset.uri, data_files_digest(dataset.uri, store_factory, cache))
    root = dataset_tree(dataset.uri)
    if root is None:
        return ResolvedSource(dataset.uri, _dataset_listing_digest(dataset, store_factory(dataset.uri)))
    return ResolvedSource(dataset.uri, local_dataset_digest(root, dataset.structure, cache))


def local_dataset_digest(root: Path, structure: str, cache: DigestCache | None = None) -> str:
    """Digest of what the dataset builder reads under `root`: the structure file and every file under topics/."""
    structure_file = root / structure
    for relative, field in ((structure, "spec.dataset.structure"), (TOPICS_FOLDER, "spec.dataset.uri")):
        # As the dataset stage refuses it, before any stage starts (and before the files beyond are hashed).
        if not _real(root / relative).is_relative_to(_real(root)):
            raise SourceError(f"{field}: {relative} leads outside the dataset folder {root}; copy it into the tree")
    if not _looks(structure_file.is_file, "spec.dataset.structure"):  # a FIFO or device would block or read forever
        problem = "is not a regular file" if os.path.lexists(structure_file) else "does not exist"
        raise SourceError(f"spec.dataset.structure: {structure_file} {problem}")
    files = [(structure, structure_file)]
    topics = root / TOPICS_FOLDER
    try:
        if topics.is_dir():
            files += topic_files(topics)
        return listing_digest(file_lines(root, files, cache, confined=True))
    except (ValueError, OSError) as error:
        raise SourceError(f"spec.dataset.uri: {printable(str(error))}") from None


def topic_files(topics: Path) -> list[tuple[str, Path]]:
    """The files under `topics/` the way the dataset builder walks it: names starting with '.' skipped, symlinks
    followed while they stay inside `topics/` (a loop is walked once), anything else refused. A FIFO or device is
    refused before it is opened: hashing one would block or read forever."""
    real_root = _real(topics)
    found: list[tuple[str, Path]] = []
    seen: set[Path] = set()

    def walk(folder: Path, relative: str) -> None:
        real = _real(folder)
        if real in seen:
            return
        seen.add(real)
        with os.scandir(folder) as listing:
            entries = sorted((entry for entry in listing if not entry.name.startswith(".")), key=lambda e: e.name)
        for entry in entries:
            path, name = Path(entry.path), f"{relative}/{entry.name}"
            if entry.is_symlink() and not _real(path).is_relative_to(real_root):
                raise ValueError(f"{path} is a symlink to {_real(path)}, outside {topics}")
            if entry.is_dir():
                walk(path, name)
            elif entry.is_file():
                found.append((name, path))
            else:
                raise ValueError(f"{path} is not a regular file or folder (a FIFO, socket, device, broken link or "
                                 "symlink loop)")

    walk(topics, TOPICS_FOLDER)
    return found


def _looks(test: Callable[[], bool], field: str) -> bool:
    """`path.is_dir` or `path.is_file`, whose stat raises for a name too long for the file system (or a folder on
    the way it may not search) rather than answering False: the field's path cannot be used, said as such."""
    try:
        return test()
    except OSError as error:
        raise SourceError(f"{field}: {printable(str(error))}") from None


def _real(path: Path) -> Path:
    """Where `path` leads, symlinks followed; a symlink loop stays itself (Path.resolve raises RuntimeError on one,
    which no caller would take for bad input)."""
    return Path(os.path.realpath(path))


def local_data_files(uri: str) -> tuple[Path, list[tuple[str, Path]]]:
    """(root, [(relative name, path)]) of a data-files dataset (`spec.dataset.format` other than tree): the file the
    URI names, or every .jsonl/.json/.parquet file under the folder it names, walked as `topics/` is."""
    path = dataset_tree(uri) if not _names_a_file(uri) else _local_path(uri)
    if path is None:
        raise SourceError(f"spec.dataset.uri: {uri} is not a local path")
    if path.is_file():
        return path.parent, [(path.name, path)]
    try:
        files = [(name, file) for name, file in topic_files(path) if is_data_file(name)]
    except (ValueError, OSError) as error:
        raise SourceError(f"spec.dataset.uri: {printable(str(error))}") from None
    if not files:
        raise SourceError(f"spec.dataset.uri: no .jsonl, .json or .parquet files under {path}")
    return path, [(name.split("/", 1)[1], file) for name, file in files]


def s3_data_files(uri: str, store_factory: StoreFactory) -> tuple[Store, list[Any]]:
    """(store, objects) of a data-files dataset in S3: the object the URI names (a key ending .jsonl, .json or
    .parquet), or every such object under the prefix."""
    if _names_a_file(uri):
        parent, name = uri.rstrip("/").rsplit("/", 1)
        store = store_factory(parent)
        objects = [o for o in store.list("") if o.key == name]
    else:
        store = store_factory(uri.rstrip("/"))
        objects = [o for o in store.list("") if is_data_file(o.key)]
    if not objects:
        raise SourceError(f"spec.dataset.uri: no .jsonl, .json or .parquet objects at {uri}")
    return store, objects


def data_files_digest(uri: str, store_factory: StoreFactory, cache: DigestCache | None = None) -> str:
    if uri.startswith("s3://"):
        store, objects = s3_data_files(uri, store_factory)
        return _etag_digest("spec.dataset.uri", store, objects)
    root, files = local_data_files(uri)
    try:
        return listing_digest(file_lines(root, files, cache, confined=True))
    except (ValueError, OSError) as error:
        raise SourceError(f"spec.dataset.uri: {printable(str(error))}") from None


def hub_dataset(uri: str) -> tuple[str, str, str]:
    """(repo id, revision, path in the repo) of `hf://datasets/org/name[@revision][/path]`."""
    match = _HF_DATASET.fullmatch(uri)
    if match is None or ".." in (match["path"] or "").split("/"):
        raise SourceError(f"spec.dataset.uri: {uri!r} must look like hf://datasets/org/name[@revision][/path]")
    return match["repo"], match["revision"] or "main", (match["path"] or "").strip("/")


def hub_dataset_commit(uri: str, hub_cache: Path | None) -> str:
    """The commit a Hub dataset's revision points to now (a 40-hex revision is one already). With `HF_HUB_OFFLINE`
    set, the ref recorded in the local Hugging Face cache answers."""
    repo_id, revision, _ = hub_dataset(uri)
    if COMMIT.fullmatch(revision):
        return revision
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        ref = (hub_cache or Path()) / f"datasets--{repo_id.replace('/', '--')}" / "refs" / revision
        commit = ref.read_text(encoding="utf-8").strip() if hub_cache and ref.is_file() else ""
        if not COMMIT.fullmatch(commit):
            raise SourceError(f"spec.dataset.uri: cannot resolve {uri} revision {revision!r} offline (HF_HUB_OFFLINE "
                              f"is set and the local Hugging Face cache holds no commit for it); pin a commit sha "
                              "or allow Hub access")
        return commit
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None,
                     token=os.environ.get("HF_TOKEN") or None).dataset_info(repo_id, revision=revision)
    except HfHubHTTPError as error:
        raise SourceError(f"spec.dataset.uri: cannot resolve {uri} revision {revision!r} on the Hub: "
                          f"{' '.join(str(error).split())}") from None
    except (httpx.HTTPError, OSError) as error:
        raise SourceError(f"spec.dataset.uri: cannot resolve {uri} revision {revision!r}: the Hub cannot be reached "
                          f"({type(error).__name__}); pin a commit sha with the dataset in the local Hugging Face "
                          "cache and HF_HUB_OFFLINE=1, or allow Hub access") from None
    if not isinstance(info.sha, str) or not COMMIT.fullmatch(info.sha):
        raise SourceError(f"spec.dataset.uri: the Hub gave no commit for {uri} revision {revision!r}")
    if hub_cache is not None:  # as huggingface_hub records a ref: an offline run resolves the revision the same way
        ref = hub_cache / f"datasets--{repo_id.replace('/', '--')}" / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        partial = ref.with_name(f".{revision}.partial")
        partial.write_text(info.sha, encoding="utf-8")
        partial.replace(ref)
    return info.sha


def _names_a_file(uri: str) -> bool:
    return is_data_file(uri) and not uri.endswith("/")


def _local_dataset_path(uri: str, kind: str, path: Path | None = None) -> Path:
    """The path a local dataset URI names (`path`, or the file:// or plain URI decoded), checked after decoding: a
    percent-encoded '..' (%2e%2e) passes a check of the URI as written."""
    if path is None:
        path = local_uri_path(uri)
    if not path.is_absolute() or ".." in path.parts or "\x00" in str(path):
        raise SourceError(f"spec.dataset.uri: {uri} must name an absolute {kind} without '..'")
    return path


def _local_path(uri: str) -> Path:
    mounted = pvc_folder(uri, "spec.dataset.uri") if uri.startswith(PVC_SCHEME) else None
    path = _local_dataset_path(uri, "path", mounted)
    if not _looks(path.is_file, "spec.dataset.uri"):
        raise SourceError(f"spec.dataset.uri: {path} is not a file")
    return path


def _dataset_listing_digest(dataset: t.DatasetSpec, store: Store) -> str:
    objects = [o for o in store.list("") if o.key == dataset.structure or o.key.startswith(f"{TOPICS_FOLDER}/")]
    if not any(o.key == dataset.structure for o in objects):
        raise SourceError(f"spec.dataset.structure: {store.uri_for(validate_key(dataset.structure))} does not exist")
    return _etag_digest("spec.dataset.uri", store, objects)


def _etag_digest(field_name: str, store: Store, objects: list[Any]) -> str:
    missing = [o.key for o in objects if not o.etag]
    if missing:
        raise SourceError(f"{field_name}: the store gave no ETag for {store.uri_for(missing[0])}, so its content "
                          "cannot be told apart from a changed one")
    return listing_digest((o.key, o.size, f"etag:{o.etag}") for o in objects)


# --- template -----------------------------------------------------------------------------------------------------


def template_source(spec: ChatTemplateSpec, base_model: ResolvedSource, store_factory: StoreFactory
                    ) -> ResolvedSource:
    """The run's chat template, checked (kubetune/chat_templates.py), by the sha256 of its text; `base` by the base
    model's content digest, which holds its template."""
    from kubetune.chat_templates import ChatTemplateError, template_digest  # jinja2: not in the operator's image

    try:
        uri, digest = template_digest(spec, base_model.digest, store_factory)
    except ChatTemplateError as error:
        raise SourceError(printable(str(error))) from None
    return ResolvedSource(uri, digest)


# --- base model ---------------------------------------------------------------------------------------------------


def base_model_source(base: t.BaseModelSpec, store_factory: StoreFactory, cache: DigestCache | None,
                      hub_cache: Path, snapshots: Store | None = None) -> ResolvedSource:
    uri = base.uri
    if uri.startswith(BUNDLED_SCHEME):
        name = uri[len(BUNDLED_SCHEME):]
        bundled = BUNDLED_MODELS.get(name)
        if bundled is None:
            raise SourceError(f"spec.baseModel.uri: unknown bundled model {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")
        try:
            gguf = bundled.locate()
        except BaseModelError as error:
            raise SourceError(f"spec.baseModel.uri: {error}") from None
        digest = cache.sha256(gguf) if cache is not None else DigestCache().sha256(gguf)
        return ResolvedSource(uri, digest)
    if uri.startswith("hf://"):
        repo_id, commit = hub_commit(uri, base.revision, hub_cache)
        digest = hub_model_digest(uri, repo_id, commit, cache, hub_cache, snapshots)
        if base.sha256 and digest != base.sha256:
            raise SourceError(f"spec.baseModel.sha256: the model files of {uri} at {commit} have digest {digest}, "
                              f"not {base.sha256}")
        return ResolvedSource(uri, digest, revision=commit)
    if uri.startswith("s3://"):
        if base.sha256:
            return ResolvedSource(uri, base.sha256)  # the folder digest: the model job checks it when it fetches
        store = store_factory(uri.rstrip("/"))
        objects = store.list("")
        if not objects:
            raise SourceError(f"spec.baseModel.uri: no objects under {uri}")
        return ResolvedSource(uri, _etag_digest("spec.baseModel.uri", store, objects))
    if uri.startswith(PVC_SCHEME):
        folder = pvc_folder(uri)
    else:
        folder = local_uri_path(uri).expanduser()
    if not _looks(folder.is_dir, "spec.baseModel.uri"):
        raise SourceError(f"spec.baseModel.uri: the model folder {folder} does not exist")
    _check_model_config(folder / "config.json")
    try:
        return ResolvedSource(uri, folder_digest(folder, cache))
    except (ValueError, OSError) as error:  # a FIFO, loop or symlinked folder in it: the field, not a bare path
        raise SourceError(f"spec.baseModel.uri: {printable(str(error))}") from None


def _check_model_config(config: Path) -> None:
    """A config.json no stage can parse fails the run before any stage, naming the file: the train stage failed on
    it with transformers' bare JSON error (exit 1, retried). Its fields are the stages' to check."""
    if not config.is_file():
        return  # a model without one is the stage's to refuse; a FIFO or link loop, folder_digest's
    try:
        with config.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return  # unreadable: folder_digest names it
    problem = f"larger than {MAX_CONFIG_BYTES >> 20} MiB" if len(data) > MAX_CONFIG_BYTES else None
    if problem is None and data.startswith(codecs.BOM_UTF8):
        problem = "starts with a UTF-8 byte order mark (BOM)"
    if problem is None:
        try:
            value = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as error:
            problem = f"not UTF-8 (byte {error.start})"
        except json.JSONDecodeError as error:
            problem = f"not JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        except (ValueError, RecursionError):
            problem = "not JSON the parser reads (nested too deep, or an integer too long)"
        else:
            problem = None if isinstance(value, dict) else f"not a JSON object (a {type(value).__name__})"
    if problem is not None:
        raise SourceError(f"spec.baseModel.uri: {config}: {problem}; re-save the model with save_pretrained")


def is_local_model(uri: str) -> bool:
    """A model in a folder the job sees (a path, file:// or a mounted pvc:// claim), as opposed to a bundled, S3 or
    Hub one."""
    return not uri.startswith((BUNDLED_SCHEME, "hf://", "s3://"))


def pvc_claim(uri: str) -> tuple[str, str]:
    """(claim name, path inside the claim) of `pvc://claim/path`."""
    claim, _, path = uri[len(PVC_SCHEME):].partition("/")
    return claim, path.strip("/")


def pvc_folder(uri: str, field: str = "spec.baseModel.uri") -> Path:
    """Where a pvc:// model or dataset is in a Job's pod: the operator mounts the claim read-only at
    `<PVC_ROOT_ENV>/<claim>`. Elsewhere (`kubetune run`) there is no claim to read: refused with what to write
    instead."""
    root = os.environ.get(PVC_ROOT_ENV)
    if not root:
        raise SourceError(f"{field}: {uri} is read from a PersistentVolumeClaim, which only the operator's Jobs "
                          "mount; for kubetune run give the folder's local path (the same files give the same digest "
                          "and stage keys)")
    claim, path = pvc_claim(uri)
    folder = Path(root, claim, *(part for part in path.split("/") if part))
    if ".." in folder.parts or "\x00" in str(folder):
        raise SourceError(f"{field}: {uri} must name a path in the claim without '..'")
    return folder


def hub_model_digest(uri: str, repo_id: str, commit: str, cache: DigestCache | None, hub_cache: Path,
                     snapshots: Store | None) -> str:
    """The folder digest of the model files of `repo_id` at `commit`: from the snapshot ref in the store when one is
    there (no Hub request), else by downloading them once and storing the snapshot."""
    if snapshots is not None:
        stored = stored_hf_digest(snapshots, repo_id, commit)
        if stored is not None:
            return stored
    try:
        folder = hub_download(repo_id, commit, hub_cache)
        digest = files_digest(folder, cache)
        if snapshots is not None:
            publish_snapshot(snapshots, folder, digest, repo_id=repo_id, commit=commit, cache=cache)
    except SnapshotError as error:
        raise SourceError(f"spec.baseModel.uri: cannot take {uri} at commit {commit}: {error}") from None
    return digest


def hub_commit(uri: str, revision: str | None, hub_cache: Path) -> tuple[str, str]:
    """(repo id, commit sha) that `hf://org/name[@rev]` (or `revision`) points to now.

    A 40-hex revision is a commit already. Otherwise the Hub is asked (`HF_ENDPOINT`, `HF_TOKEN` as
    huggingface_hub reads them); with `HF_HUB_OFFLINE` set, the ref recorded in the local Hugging Face cache answers.
    """
    repo_id, _, uri_revision = uri[len("hf://"):].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SourceError(f"spec.baseModel.uri: {uri!r} must look like hf://org/name or hf://org/name@revision")
    wanted = revision or uri_revision or "main"
    if COMMIT.fullmatch(wanted):
        return repo_id, wanted
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        ref = hub_cache / f"models--{repo_id.replace('/', '--')}" / "refs" / wanted
        commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
        if not COMMIT.fullmatch(commit):
            raise SourceError(f"spec.baseModel.uri: cannot resolve {uri} revision {wanted!r} offline (HF_HUB_OFFLINE "
                              f"is set and {ref} holds no commit); pin a commit sha or allow Hub access")
        return repo_id, commit
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None,
                     token=os.environ.get("HF_TOKEN") or None).model_info(repo_id, revision=wanted)
    except HfHubHTTPError as error:
        raise SourceError(f"spec.baseModel.uri: cannot resolve {uri} revision {wanted!r} on the Hub: "
                          f"{' '.join(str(error).split())}") from None
    except (httpx.HTTPError, OSError) as error:  # no route, DNS, refused, timed out: the Hub cannot be reached
        raise SourceError(f"spec.baseModel.uri: cannot resolve {uri} revision {wanted!r}: the Hub cannot be reached "
                          f"({type(error).__name__}: {' '.join(str(error).split()) or 'no answer'}); pin a commit "
                          "sha (hf://org/name@<40 hex>) with the model in the local Hugging Face cache and "
                          "HF_HUB_OFFLINE=1, or allow Hub access") from None
    if not isinstance(info.sha, str) or not COMMIT.fullmatch(info.sha):
        raise SourceError(f"spec.baseModel.uri: the Hub gave no commit for {uri} revision {wanted!r}")
    return repo_id, info.sha
