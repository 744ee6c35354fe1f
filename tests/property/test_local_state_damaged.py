"""A finished local run whose store and state folder were damaged the way users damage them — a disk that filled up
mid-write, a Ctrl-C, an interrupted rsync or a copy that kept symlinks, a hand edit, a file deleted from a stage
output, a folder where a file was — met by `kubetune run` (again), `kubetune status`, `kubetune ask` and the web view.

- A damaged published output is never reused as if it were whole: a manifest that is no manifest (cut short, not
  JSON, the wrong shape, not canonical, huge, a link, a folder) or one listing a file that is missing, of another
  size, other bytes, a link or a folder makes `kubetune run` say which file and build the stage afresh (as
  `--from-stage` would); before, a deleted or truncated file was reported "Cached" and a manifest that was no JSON
  stopped every later run. The output it builds again is the original one, byte for byte. A store that is not local
  (S3) is checked by the sizes one listing gives.
- The web view says which file of an output is missing or of another size, and never serves other bytes than the
  published ones.
- A stage output file or manifest that is a symbolic link is never followed: nothing outside the store is read (a
  manifest linked to /dev/zero was read forever; a link to a file elsewhere was served as the output's).
- The run's status.json and events.jsonl, cut short, emptied, not JSON, huge, a link (to a file elsewhere, to
  /dev/zero), a pipe or a folder: `kubetune status` and `kubetune ask` are one line naming the file, exit 2 (status
  printed the file a link led to; a folder said there was no such run); the view still answers; `kubetune run`
  rewrites a damaged file whole, or refuses in one line a link or a folder it would write through or remove (it
  wrote status.json through a symlink, wherever that led).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.store import LINEAGE_NAME, LocalStore, ObjectInfo, Store, StoreError, content_digest, read_manifest
from kubetune.store.verify import output_problem
from kubetune.webview.localsource import LocalRuns
from kubetune.webview.model import NotFound
from tests.property.cli_inputs import RUN_DATASET, dataset_run, kubetune
from tests.property.scratch_files import overwrite

RUN_DIR = Path(".kubetune", "runs", "default", "hostile")
DATASET = Path("store", "default", "hostile", "dataset")
SECRET = b'{"secret": "a file outside the store and the state folder"}'
SAID_SECRET = "a file outside the store"  # the secret's content: no message ever holds it
# Each example copies the run and runs its dataset stage again (about half a second): fewer than the profile's count.
rebuilds = settings(max_examples=max(8, (settings.default or settings()).max_examples // 4))


@dataclass(frozen=True)
class Finished:
    """A run whose dataset stage really ran, as `kubetune run` left its folder; examples work on copies."""

    root: Path
    output: str  # the dataset output's folder name (its key prefix)
    published: dict[str, bytes]  # the files its manifest lists, by path
    digest: str  # its content digest

    @contextlib.contextmanager
    def copy(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="kubetune-damaged-") as scratch:
            root = Path(scratch, "run")
            shutil.copytree(self.root, root, symlinks=True)
            (Path(scratch) / "secret.json").write_bytes(SECRET)  # what a link may lead to: never read or written
            with contextlib.chdir(root):
                yield root
            assert (Path(scratch) / "secret.json").read_bytes() == SECRET


@pytest.fixture(scope="module")
def finished() -> Iterator[Finished]:
    with dataset_run("kubetune-finished-") as root:
        [output] = (root / DATASET).iterdir()
        found = read_manifest(LocalStore(root / "store"), f"default/hostile/dataset/{output.name}")
        assert found is not None
        published = {entry.path: (output / entry.path).read_bytes() for entry in found.files}
        yield Finished(root, output.name, published, content_digest(found))


# --- a damaged stage output --------------------------------------------------------------------------------------

def _replace(path: Path, make: Callable[[Path], object]) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    make(path)


def _folder_with_a_file(path: Path) -> None:
    path.mkdir()
    (path / "inner").write_bytes(b"x")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=6)
odd_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@st.composite
def file_damage(draw: st.DrawFn, published: dict[str, bytes]) -> tuple[str, Callable[[Path], None]]:
    """One of the output's files (its manifest included) damaged: (its name, the damage applied to its folder)."""
    name = draw(st.sampled_from(sorted(published) + ["manifest.json"]))
    original = published.get(name)
    kind = draw(st.sampled_from(["deleted", "cut short", "other bytes", "link out", "link to /dev/zero", "folder",
                                 "pipe"] + (["same size, other bytes"] if original else [])))
    cut = draw(st.integers(0, max(0, len(original or b"") - 1)))
    other = draw(st.binary(min_size=1, max_size=64))

    def damage(folder: Path) -> None:
        path = folder / name
        if kind == "deleted":
            path.unlink()
        elif kind == "cut short":
            overwrite(path, path.read_bytes()[:cut])
        elif kind == "other bytes":
            overwrite(path, path.read_bytes() + other)
        elif kind == "same size, other bytes":
            data = bytearray(path.read_bytes())
            data[cut] ^= 0xFF
            overwrite(path, bytes(data))
        elif kind == "link out":
            _replace(path, lambda p: p.symlink_to(folder.parents[5] / "secret.json"))
        elif kind == "link to /dev/zero":
            _replace(path, lambda p: p.symlink_to("/dev/zero"))
        elif kind == "folder":
            _replace(path, _folder_with_a_file)
        else:
            _replace(path, os.mkfifo)

    return f"{name} {kind}", damage


@st.composite
def manifest_damage(draw: st.DrawFn, published: dict[str, bytes]) -> tuple[str, Callable[[Path], None]]:
    """The manifest rewritten: wrong shape or types, a wrong size or sha256, an extra entry (any name), or one it
    drops; canonical or not."""
    kind = draw(st.sampled_from(["any JSON", "wrong size", "wrong sha256", "extra entry", "not canonical",
                                 "huge", "not UTF-8"]))
    value, extra = draw(json_values), draw(odd_names)
    target = draw(st.integers(0, len(published) - 1))

    def damage(folder: Path) -> None:
        path = folder / "manifest.json"
        document: Any = json.loads(path.read_bytes())
        entry = document["files"][target]
        if kind == "any JSON":
            document = value
        elif kind == "wrong size":
            entry["size"] += 1
        elif kind == "wrong sha256":
            entry["sha256"] = "0" * 64
        elif kind == "extra entry":
            document["files"].append({"path": extra, "size": 1, "sha256": "1" * 64})
            document["files"].sort(key=lambda e: str(e["path"]))
        if kind == "huge":
            with path.open("r+b") as handle:
                handle.truncate(65 << 20)  # sparse: past what a manifest may be, without writing 65 MiB
        elif kind == "not UTF-8":
            overwrite(path, b"\xff\xfe" + path.read_bytes())
        else:
            canonical = kind != "not canonical"
            overwrite(path, json.dumps(document, sort_keys=canonical, separators=(",", ":") if canonical else None)
                      .encode())

    return f"manifest {kind}", damage


@rebuilds
@given(data=st.data())
def test_a_damaged_output_is_named_and_built_again_never_reused(finished: Finished, data: st.DataObject) -> None:
    what, damage = data.draw(st.one_of(file_damage(finished.published), manifest_damage(finished.published)))
    with finished.copy() as root:
        damage(root / DATASET / finished.output)
        code, err = kubetune(*RUN_DATASET)
        assert code == 0, (what, err)
        said = [line for line in err if "building the dataset stage's output again" in line]
        if what == "manifest.json deleted":  # no manifest: an output never finished publishing, built silently
            assert not said, (what, said)
        else:
            assert len(said) == 1 and f"/dataset/{finished.output}/" in said[0], (what, said)
            assert SAID_SECRET not in said[0]
        status = json.loads((root / RUN_DIR / "status.json").read_text(encoding="utf-8"))["status"]
        assert status["stages"]["dataset"]["phase"] == "Succeeded", what
        store = LocalStore(root / "store")
        prefix = f"default/hostile/dataset/{finished.output}"
        rebuilt = read_manifest(store, prefix)
        assert rebuilt is not None and output_problem(store, prefix, rebuilt) is None
        assert content_digest(rebuilt) == finished.digest
        content = {f.path: store.get_bytes(f"{prefix}/{f.path}") for f in rebuilt.files if f.path != LINEAGE_NAME}
        assert content == {path: data for path, data in finished.published.items() if path != LINEAGE_NAME}


def test_a_whole_output_is_reused(finished: Finished) -> None:
    with finished.copy() as root:
        code, err = kubetune(*RUN_DATASET)
        assert code == 0 and not any("again" in line for line in err), err
        status = json.loads((root / RUN_DIR / "status.json").read_text(encoding="utf-8"))["status"]
        assert status["stages"]["dataset"]["phase"] == "Cached"


@given(data=st.data())
def test_the_view_of_a_damaged_output_never_serves_other_bytes(finished: Finished, data: st.DataObject) -> None:
    what, damage = data.draw(st.one_of(file_damage(finished.published), manifest_damage(finished.published)))
    with finished.copy() as root:
        damage(root / DATASET / finished.output)
        runs = LocalRuns((root / ".kubetune").resolve(), str((root / "store").resolve()))
        page = runs.page("default", "hostile")  # a problem line on the page, never an error page
        if not what.endswith(("same size, other bytes", "wrong sha256")):  # what a listing's sizes cannot tell
            assert any(f"/dataset/{finished.output}/" in problem for problem in page.problems), (what, page.problems)
        for path in finished.published:
            try:
                with runs.download("default", "hostile", "dataset", path) as fetched:
                    served = b"".join(fetched.verified())
            except (NotFound, StoreError):
                continue
            assert served == finished.published[path], what


# --- a damaged state folder --------------------------------------------------------------------------------------

STATE_DAMAGE: dict[str, Callable[[Path], object]] = {
    "empty": lambda path: overwrite(path, b""),
    "not JSON": lambda path: overwrite(path, b"\x00\xff binary \x89PNG"),
    "huge": lambda path: os.truncate(path, 17 << 20),  # sparse, past what a state file may be
    "a link out": lambda path: _replace(path, lambda p: p.symlink_to(path.parents[5] / "secret.json")),
    "a link to /dev/zero": lambda path: _replace(path, lambda p: p.symlink_to("/dev/zero")),
    "a dangling link": lambda path: _replace(path, lambda p: p.symlink_to(p.parent / "nowhere")),
    "a pipe": lambda path: _replace(path, os.mkfifo),
    "a folder": lambda path: _replace(path, os.mkdir),
}
UNWRITABLE = {"a link out", "a link to /dev/zero", "a dangling link", "a pipe", "a folder"}


@given(kind=st.sampled_from(sorted(STATE_DAMAGE)) | st.integers(1, 2000).map(lambda n: f"cut at {n}"))
def test_status_ask_and_the_view_on_a_damaged_status_file(finished: Finished, kind: str) -> None:
    with finished.copy() as root:
        status_file = root / RUN_DIR / "status.json"
        if kind.startswith("cut at "):
            overwrite(status_file, status_file.read_bytes()[:int(kind.removeprefix("cut at "))])
        else:
            STATE_DAMAGE[kind](status_file)
        for command in (("status", "hostile"), ("ask", "run.yaml", "Who are you?", "--store", "store")):
            code, err = kubetune(*command)
            assert code == 2 and len(err) == 1 and "status.json" in err[0], (kind, command, err)
            assert SAID_SECRET not in err[0], err
        runs = LocalRuns((root / ".kubetune").resolve())
        assert runs.runs() == []  # the damaged run is left off the index
        with pytest.raises(NotFound):
            runs.page("default", "hostile")


@given(kind=st.sampled_from(sorted(STATE_DAMAGE)), name=st.sampled_from(["status.json", "events.jsonl",
                                                                          "dataset.log", "dataset.run.json"]))
def test_kubetune_run_rewrites_a_damaged_state_file_or_refuses_one_it_would_write_through(
        finished: Finished, kind: str, name: str) -> None:
    with finished.copy() as root:
        STATE_DAMAGE[kind](root / RUN_DIR / name)
        code, err = kubetune(*RUN_DATASET)
        if kind in UNWRITABLE:
            what = {"a pipe": "a pipe, socket or device", "a folder": "a folder"}.get(kind, "a symbolic link")
            assert code == 2 and err[-1].endswith(f"{RUN_DIR / name}: {what} where kubetune run keeps its own file: "
                                                  "remove it"), (kind, err)
            return
        assert code == 0, (kind, err)
        document = json.loads((root / RUN_DIR / "status.json").read_text(encoding="utf-8"))
        assert document["status"]["stages"]["dataset"]["phase"] == "Cached"


@pytest.mark.parametrize("where", ["runs/default/hostile", "runs/default", "runs"])
def test_a_run_folder_linked_out_of_the_state_folder_is_refused_by_every_command(finished: Finished,
                                                                                 where: str) -> None:
    with finished.copy() as root:
        linked, elsewhere = root / ".kubetune" / where, root.parent / "elsewhere"
        shutil.move(linked, elsewhere)
        linked.symlink_to(elsewhere, target_is_directory=True)
        before = sorted(p.name for p in elsewhere.rglob("*"))
        for command in (RUN_DATASET, ("status", "hostile"), ("ask", "run.yaml", "Who are you?", "--store", "store")):
            code, err = kubetune(*command)
            assert code == 2 and err[-1].startswith("kubetune: ") and "outside .kubetune" in err[-1], (command, err)
        assert sorted(p.name for p in elsewhere.rglob("*")) == before  # nothing written there


@given(cut=st.integers(1, 200))
def test_events_cut_short_by_a_stop_do_not_swallow_the_next_run_s_events(finished: Finished, cut: int) -> None:
    with finished.copy() as root:
        events = root / RUN_DIR / "events.jsonl"
        before = events.read_bytes()
        overwrite(events, before[:len(before) - min(cut, len(before) - 1)])
        kept = sum(1 for line in events.read_bytes().splitlines() if line.endswith(b"}"))
        code, err = kubetune(*RUN_DATASET)
        assert code == 0, err
        lines = events.read_bytes().splitlines()
        parsed = [json.loads(line) for line in lines if line.endswith(b"}")]
        assert len(lines) - len(parsed) <= 1  # only the line cut short
        assert len(parsed) > kept  # this run's events, each on a line of its own


class RemoteLike(Store):
    """A store that is not local (as S3 is to output_problem): the same objects, seen through the Store interface."""

    def __init__(self, local: LocalStore) -> None:
        self.local = local

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.local.put_file(key, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.local.put_bytes(key, data)

    def get_file(self, key: str, path: str | os.PathLike[str], *, sha256: str | None = None) -> None:
        self.local.get_file(key, path, sha256=sha256)

    def get_bytes(self, key: str) -> bytes:
        return self.local.get_bytes(key)

    def exists(self, key: str) -> bool:
        return self.local.exists(key)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        return self.local.list(prefix)

    def delete(self, key: str) -> None:
        self.local.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.local.delete_prefix(prefix)

    def uri_for(self, key: str) -> str:
        return f"s3://bucket/{key}"


@pytest.mark.parametrize(("damage", "said"), [
    (lambda path: path.unlink(), "missing, though its manifest lists it"),
    (lambda path: overwrite(path, path.read_bytes()[:-1]), "bytes where its manifest says"),
    (lambda path: _replace(path, lambda p: p.symlink_to("/dev/zero")), "missing, though its manifest lists it"),
])
def test_an_output_in_a_remote_store_is_checked_by_the_sizes_one_listing_gives(
        finished: Finished, damage: Callable[[Path], None], said: str) -> None:
    with finished.copy() as root:
        prefix = f"default/hostile/dataset/{finished.output}"
        store = RemoteLike(LocalStore(root / "store"))
        published = read_manifest(store, prefix)
        assert published is not None and output_problem(store, prefix, published) is None
        damage(root / DATASET / finished.output / "train_data.jsonl")
        assert output_problem(store, prefix, published) == f"s3://bucket/{prefix}/train_data.jsonl: " + {
            "bytes where its manifest says": f"{len(finished.published['train_data.jsonl']) - 1} bytes where its "
                                             f"manifest says {len(finished.published['train_data.jsonl'])}",
        }.get(said, said)
