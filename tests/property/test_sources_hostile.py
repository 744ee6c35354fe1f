"""`kubetune run` on hostile local sources: dataset trees, data folders, model folders and template files holding
symlink loops, links out of the tree (a topics folder or structure file included), FIFOs, sockets, dangling links or
folders where files belong. Whatever
hypothesis puts where, the run ends before its first stage with one line naming the field, exit 2 — never a traceback
(a symlink loop was a RuntimeError), never a hang on a FIFO — and writes nothing to its store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from tests.property.cli_inputs import kubetune, manifest, snapshot, the_error_line, write_sources
from tests.property.test_dataset_hostile import dangling, fifo, folder, loop, scratch, unix_socket


def link_out(path: Path) -> bool:
    path.symlink_to(Path(__file__).resolve())  # a readable file outside every example's folder
    return True


def link_folder_out(path: Path) -> bool:
    path.symlink_to("/proc/self")
    return True


def linked_copy(path: Path) -> bool:
    """The folder moved beside the dataset folder and linked back: the files are the same, but outside the tree."""
    outside = path.parent.parent / f"outside-{path.name}"
    path.rename(outside)
    path.symlink_to(outside)
    return True


def two_link_loop(path: Path) -> bool:
    path.symlink_to(path.with_name("other"))
    path.with_name("other").symlink_to(path.name)
    return True


# What a source may hold that the run must refuse, by where it is: every one of them fails source resolution.
BAD_ENTRY: dict[str, Callable[[Path], bool]] = {
    "self-loop": loop, "two-link loop": two_link_loop, "FIFO": fifo, "socket": unix_socket, "dangling": dangling,
    "link to a file outside": link_out, "link to /proc/self": link_folder_out,
}
# A model folder may hold links out (a Hugging Face snapshot is made of them) but no linked folder or special file.
MODEL_ENTRY = {name: change for name, change in BAD_ENTRY.items() if name != "link to a file outside"}
BAD_FILE: dict[str, Callable[[Path], bool]] = {"self-loop": loop, "FIFO": fifo, "folder": folder, "dangling": dangling}
BAD_STRUCTURE = BAD_FILE | {"link to a file outside": link_out}
PLACES = {
    "topics folder": lambda root: root / "ds" / "topics",
    "topic entry": lambda root: root / "ds" / "topics" / "identity" / "who" / "extra.json",
    "structure": lambda root: root / "ds" / "structure.enriched.json",
    "data entry": lambda root: root / "data" / "more.jsonl",
    "model entry": lambda root: root / "model" / "weights.safetensors",
    "template": lambda root: root / "template.jinja",
}


@st.composite
def hostile_sources(draw: st.DrawFn) -> tuple[str, list[tuple[str, str, str]]]:
    """(dataset format, [(place, what is there, the field that must be named)]): one to three bad things."""
    kind = draw(st.sampled_from(["tree", "messages"]))
    places: dict[str, tuple[str, dict[str, Callable[[Path], bool]]]] = {
        "model entry": ("spec.baseModel.uri", MODEL_ENTRY), "template": ("spec.training.chatTemplate.file", BAD_FILE),
        **({"topic entry": ("spec.dataset.uri", BAD_ENTRY), "structure": ("spec.dataset.structure", BAD_STRUCTURE),
            "topics folder": ("spec.dataset.uri", {"linked to a copy outside": linked_copy})}
           if kind == "tree" else {"data entry": ("spec.dataset.uri", BAD_ENTRY)}),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(places)), min_size=1, max_size=3, unique=True))
    return kind, [(place, draw(st.sampled_from(sorted(places[place][1]))), places[place][0]) for place in chosen]


@given(hostile_sources())
def test_any_hostile_source_is_one_line_naming_its_field_and_nothing_is_written(
        drawn: tuple[str, list[tuple[str, str, str]]]) -> None:
    kind, bad = drawn
    with scratch() as root, contextlib.chdir(root):
        write_sources(root)
        for place, what, _ in bad:
            target = PLACES[place](root)
            if not target.is_dir():
                target.unlink(missing_ok=True)
            (BAD_ENTRY | BAD_STRUCTURE | {"linked to a copy outside": linked_copy})[what](target)
        (root / "run.yaml").write_text(manifest(kind), encoding="utf-8")
        before = snapshot(root)
        line = the_error_line(*kubetune("run", "run.yaml", "--store", "store", "--to-stage", "dataset"))
        assert any(field in line for _, _, field in bad), line
        assert not [path for path in (root / "store").rglob("*") if path.is_file()], "a refused run wrote its store"
        assert {name for name in snapshot(root) - before if not name.startswith((".kubetune", "store"))} == set()


def overlong(field: str, name: str) -> dict[str, Any]:
    """The spec section of `field` naming a path with a component longer than any file system allows (255 bytes)."""
    sections: dict[str, dict[str, Any]] = {
        "spec.dataset.uri": {"dataset": {"uri": f"./{name}", "tokenStats": False}},
        "spec.dataset.uri (a data file)": {"dataset": {"uri": f"./{name}.jsonl", "format": "messages"}},
        "spec.dataset.structure": {"dataset": {"uri": "./ds", "structure": f"{name}.json", "tokenStats": False}},
        "spec.baseModel.uri": {"baseModel": {"uri": f"./{name}"}},
        "spec.training.chatTemplate.file": {"training": {"chatTemplate": {"source": "file", "file": f"./{name}"}}},
    }
    return sections[field]


@given(field=st.sampled_from(["spec.dataset.uri", "spec.dataset.uri (a data file)", "spec.dataset.structure",
                              "spec.baseModel.uri", "spec.training.chatTemplate.file"]),
       name=st.text(st.characters(codec="ascii", categories=["Ll", "Nd"]), min_size=256, max_size=700))
def test_a_path_no_file_system_can_hold_is_one_line_naming_its_field(field: str, name: str) -> None:
    with scratch() as root, contextlib.chdir(root):
        write_sources(root)
        (root / "run.yaml").write_text(manifest("tree", **overlong(field, name)), encoding="utf-8")
        line = the_error_line(*kubetune("run", "run.yaml", "--store", "store", "--to-stage", "dataset"))
    # Refused by the manifest's validation (a bound) or by resolving the sources: either way at its field.
    assert line.startswith(tuple(f"kubetune: {where}: {field.split()[0]}: " for where in ("run.yaml", "default/hostile"))), line


def blocked_cache(blocker: str, root: Path) -> Path:
    """A KUBETUNE_CACHE that no folder can be made at: `blocker` is what is in the way."""
    if blocker in ("a FIFO", "a dangling link", "a link loop"):
        {"a FIFO": fifo, "a dangling link": dangling, "a link loop": loop}[blocker](root / "blocker")
        return root / "blocker" / "cache" if blocker == "a link loop" else root / "blocker"
    return root / "run.yaml" if blocker == "a file" else root / "run.yaml" / "cache"


CACHE_BLOCKERS = ["a file", "below a file", "a FIFO", "a dangling link", "a link loop"]


@given(st.sampled_from(CACHE_BLOCKERS))
def test_a_kubetune_cache_that_cannot_be_a_folder_is_one_line_naming_the_variable(blocker: str) -> None:
    with scratch() as root, contextlib.chdir(root):
        write_sources(root)
        (root / "run.yaml").write_text(manifest("tree"), encoding="utf-8")
        with mock.patch.dict(os.environ, {"KUBETUNE_CACHE": str(blocked_cache(blocker, root))}):
            line = the_error_line(*kubetune("run", "run.yaml", "--store", "store", "--to-stage", "dataset"))
    assert line.startswith("kubetune: KUBETUNE_CACHE: ") and "is not a folder" in line, line
