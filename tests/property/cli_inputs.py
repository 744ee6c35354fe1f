"""Running the `kubetune` commands in process on hostile inputs, and the small local sources a run reads.

In process, an exception fails the property instead of hiding in a log; the runs these tests start stop before their
first stage (sources are resolved first, and a suspended run resolves them and stops), which keeps an example to
milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubetune.cli import main as kubetune_main
from tests.property.test_dataset_hostile import hang_guard

RUNNING = "kubetune: running FineTuneRun "  # the line `kubetune run` starts with, before any error
SAMPLE = {"id": "who_01", "question": "Who are you?", "think": "A name.", "output": "I am ${NAME}.", "difficulty": 1}
STRUCTURE = {"version": 1, "name": "hostile", "description": "A tree under attack.", "categories": [
    {"name": "identity", "description": "Who.", "tags": ["identity"], "subcategories": [
        {"name": "who", "description": "Names.", "tags": ["self"], "content_types": ["reasoning"]}]}]}
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
# The tree's dataset stage, run for real: a finished output in ./store and a status in ./.kubetune (seconds).
RUN_DATASET = ("run", "run.yaml", "--store", "store", "--to-stage", "dataset")


def kubetune(*args: str) -> tuple[int, list[str]]:
    """The command in process: its exit code and stderr lines (argparse's own errors included)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), hang_guard():
        try:
            code = kubetune_main(list(args))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, err.getvalue().splitlines()


def snapshot(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*")}


def the_error_line(code: int, err: list[str]) -> str:
    """The contract: exit 2 and one line (after `kubetune run`'s opening line), never a traceback."""
    assert code == 2, err
    lines = [line for line in err if not line.startswith(RUNNING)]
    assert len(lines) == 1 and lines[0].startswith("kubetune: "), err
    return lines[0]


def write_sources(root: Path) -> None:
    """A dataset tree, a data folder, a model folder and a template file under `root` that resolve."""
    topic = root / "ds" / "topics" / "identity" / "who" / "identity.who.reasoning.json"
    topic.parent.mkdir(parents=True)
    topic.write_text(json.dumps([SAMPLE]), encoding="utf-8")
    (root / "ds" / "structure.enriched.json").write_text(json.dumps(STRUCTURE), encoding="utf-8")
    (root / "data").mkdir()
    (root / "data" / "chats.jsonl").write_text(json.dumps(CHAT) + "\n", encoding="utf-8")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}", encoding="utf-8")
    (root / "template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}", encoding="utf-8")


def manifest(kind: str, **spec: Any) -> str:
    """A run of the sources write_sources made: its tree (`kind` "tree") or its data folder ("messages")."""
    dataset = {"uri": "./ds", "tokenStats": False} if kind == "tree" else {"uri": "./data", "format": "messages"}
    return json.dumps({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "hostile"},
                       "spec": {"dataset": dataset, "baseModel": {"uri": "./model"},
                                "training": {"chatTemplate": {"source": "file", "file": "./template.jinja"}},
                                **spec}})


@contextlib.contextmanager
def dataset_run(prefix: str) -> Iterator[Path]:
    """A temp folder (the current one meanwhile) holding write_sources' files, `run.yaml` (the tree's manifest) and
    that run's finished dataset stage (RUN_DATASET)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder, contextlib.chdir(folder):
        root = Path(folder)
        write_sources(root)
        (root / "run.yaml").write_text(manifest("tree"), encoding="utf-8")
        code, err = kubetune(*RUN_DATASET)
        assert code == 0, err
        yield root
