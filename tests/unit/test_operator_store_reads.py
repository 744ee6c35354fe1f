"""What a reconcile reads of a stage's output (operator/store_reads.py): a manifest that is damaged, or in a local
store no file at all, is no output: the stage runs again and publishes a valid one, as under `kubetune run`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kubetune.operator.store_reads import StoreReads
from kubetune.stages import StageRef
from kubetune.store import LocalStore
from kubetune.store.manifest import MANIFEST_NAME

REF = StageRef(key="0" * 64, prefix="default/demo/dataset/0000000000000000")


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inner").write_bytes(b"{}")


DAMAGE: dict[str, Callable[[Path], object]] = {
    "not JSON": lambda path: path.write_bytes(b"{not json"),
    "not in canonical form": lambda path: path.write_bytes(b'{ "files": [] }'),
    "a folder": _folder,
    "a dangling link": lambda path: path.symlink_to(path.parent / "elsewhere.json"),
    "a pipe": lambda path: os.mkfifo(path),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_manifest_is_no_output_and_no_error(tmp_path: Path, damage: Callable[[Path], object]) -> None:
    store = LocalStore(tmp_path / "store")
    folder = tmp_path / "store" / REF.prefix
    folder.mkdir(parents=True)
    damage(folder / MANIFEST_NAME)
    assert asyncio.run(StoreReads().manifest(store, REF)) is None


def test_no_manifest_is_no_output(tmp_path: Path) -> None:
    assert asyncio.run(StoreReads().manifest(LocalStore(tmp_path / "store"), REF)) is None
