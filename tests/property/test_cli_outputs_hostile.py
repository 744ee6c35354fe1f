"""Where a command writes or listens: `kubetune dataset convert --out` where no tree can be written (below a FIFO or a
file, a dangling link or a link loop, a folder that holds files, /proc) ends in one located error with a hint and
exit 2 and writes nothing — an unwritable place used to end in OutputError's traceback; `kubetune crd -o` to a named
pipe nobody reads, a full disk or no file is one line naming it (the pipe used to block the command forever);
`kubetune ui --port` that is no port is argparse's error, exit 2."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.property.cli_inputs import kubetune, snapshot
from tests.property.test_dataset_hostile import scratch

REASONING_CHAT = {"messages": [{"role": "user", "content": "Who are you?"},
                               {"role": "assistant", "content": "<think>A name.</think>\n<output>Nova.</output>"}]}


def under_fifo(root: Path) -> Path:
    os.mkfifo(root / "pipe")
    return root / "pipe" / "tree"


def under_file(root: Path) -> Path:
    (root / "file").write_text("x", encoding="utf-8")
    return root / "file" / "tree"


def dangling_link(root: Path) -> Path:
    (root / "tree").symlink_to(root / "nowhere")
    return root / "tree"


def link_loop(root: Path) -> Path:
    (root / "tree").symlink_to("tree")
    return root / "tree"


def occupied(root: Path) -> Path:
    (root / "tree").mkdir()
    (root / "tree" / "kept.txt").write_text("mine", encoding="utf-8")
    return root / "tree"


OUT_PLACES: dict[str, Callable[[Path], Path]] = {
    "under a FIFO": under_fifo, "under a file": under_file, "a dangling link": dangling_link, "a link loop": link_loop,
    "a folder with files": occupied, "a file": lambda root: root / "chats.jsonl",
    "in /proc": lambda _root: Path("/proc/self/kubetune-tree"),
}


@given(place=st.sampled_from(sorted(OUT_PLACES)), depth=st.integers(0, 2))
def test_convert_to_an_output_it_cannot_write_is_one_located_error_and_writes_nothing(place: str, depth: int) -> None:
    with scratch() as root:
        (root / "chats.jsonl").write_text(json.dumps(REASONING_CHAT) + "\n", encoding="utf-8")
        # Below a folder that holds files is a new folder, which convert may write.
        out = OUT_PLACES[place](root).joinpath(*["deeper"] * (depth if place != "a folder with files" else 0))
        before = snapshot(root)
        code, err = kubetune("dataset", "convert", "--from", "messages", str(root / "chats.jsonl"), "--out", str(out))
        assert snapshot(root) == before
    assert code == 2 and "Traceback" not in "\n".join(err), err
    assert err[0].startswith(out.as_posix()) and err[1].startswith("    hint: "), err


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=65536), st.sampled_from(["", "x", "80.5", "1e3"])))
def test_ui_refuses_a_port_that_is_no_port_before_it_listens(port: int | str) -> None:
    code, err = kubetune("ui", "--port", str(port))
    assert code == 2 and err[-1].startswith("kubetune ui: error: argument --port: "), err  # bind raised OverflowError


def crd_output(place: str, root: Path) -> Path:
    if place == "a FIFO nobody reads":
        os.mkfifo(root / "pipe")
        return root / "pipe"
    if place == "below a file":
        return under_file(root)
    return {"a folder": root, "a full disk": Path("/dev/full"), "a missing folder": root / "none" / "crd.yaml"}[place]


@given(st.sampled_from(["a FIFO nobody reads", "below a file", "a folder", "a full disk", "a missing folder"]))
def test_crd_to_an_output_it_cannot_write_is_one_line_naming_it_and_never_a_wait(place: str) -> None:
    with scratch() as root:
        out = crd_output(place, root)
        code, err = kubetune("crd", "-o", str(out))  # a FIFO without a reader blocked the write forever
    assert code == 2 and len(err) == 1 and err[0].startswith(f"kubetune: {out}: "), err
