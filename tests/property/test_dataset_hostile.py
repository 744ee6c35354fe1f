"""Hostile dataset trees, files and flags against the dataset builder (`build_train_jsonl.py`, the code of the
dataset stage too): every bad input ends with located errors, each with a hint, and exit 2 — never a traceback, never
a hang, never a read outside the tree, never a partial output — and every valid input builds.

Most examples run the CLI's `main` in process (fast); a sample runs it as a subprocess, as users do.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.datasets_new.build_train_jsonl import main
from kubetune.datasets_new.create_dataset_by_structure import main as scaffold_main
from kubetune.datasets_new.scripts.normalizeJson import main as normalize_main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "datasets_new" / "build_train_jsonl.py"
SECRET = "SECRET-OUTSIDE-THE-TREE"
CATEGORIES = {"identity": ("who", "what"), "math": ("arith",)}
CLOSING_TAG = re.compile("</(think|output)>")
HANG_LIMIT_S = 20


# ---- the invariants ----------------------------------------------------------------------------------------------


class Hang(Exception):
    pass


@contextlib.contextmanager
def hang_guard(seconds: float = HANG_LIMIT_S) -> Iterator[None]:
    """Fail the example instead of blocking the suite when a build does not finish (a FIFO read, an endless loop)."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise Hang(f"the build did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Outcome:
    code: int
    stderr: str
    out_dir: Path

    def written(self) -> list[str]:
        return sorted(path.name for path in self.out_dir.iterdir()) if self.out_dir.exists() else []

    def records(self) -> list[dict[str, Any]]:
        text = (self.out_dir / "train_data.jsonl").read_text(encoding="utf-8")
        # JSONL lines end at "\n" only: str.splitlines would also split at U+0085 or U+2028 inside a string.
        return [json.loads(line) for line in text.split("\n")[:-1]]


def build(root: Path, *flags: str, out_dir: Path | None = None) -> Outcome:
    """The CLI in process on the tree at `root` (structure.enriched.json + topics/), writing into root/out."""
    out_dir = out_dir or root / "out"
    argv = ["--structure", str(root / "structure.enriched.json"), "--topics-dir", str(root / "topics"),
            "--output", str(out_dir / "train_data.jsonl"), *flags]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), hang_guard():
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = int(exit_.code or 0)
    return Outcome(code, stderr.getvalue(), out_dir)


LOCATED_PROBLEM = re.compile(r"^\S.*?: .+\n    hint: \S", re.MULTILINE)
# What would split a message line or fail to encode: controls, line separators, lone surrogates.
LINE_BREAKING = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def assert_clean(outcome: Outcome) -> None:
    """The contract for any input: exit 0 with outputs, or exit 2 with located, hinted, printable errors and nothing
    written; nothing read from outside the tree either way."""
    assert "Traceback" not in outcome.stderr
    assert outcome.code in (0, 2), outcome.stderr
    assert not LINE_BREAKING.search(outcome.stderr), outcome.stderr
    if outcome.code == 2:
        assert outcome.written() == [], "a failed build left files behind"
        last = outcome.stderr.strip().splitlines()[-1]
        assert LOCATED_PROBLEM.search(outcome.stderr) or ": error: " in last, outcome.stderr
    else:
        assert "train_data.jsonl" in outcome.written()
        assert not any(name.endswith(".tmp") for name in outcome.written())
        assert SECRET not in (outcome.out_dir / "train_data.jsonl").read_text(encoding="utf-8")


# ---- a valid tree, and valid samples -----------------------------------------------------------------------------


def structure_doc() -> dict[str, Any]:
    return {"version": 1, "name": "hostile", "description": "A tree under attack.", "categories": [
        {"name": category, "description": f"The {category} category.", "tags": [category], "subcategories": [
            {"name": sub, "description": f"The {sub} subcategory.", "tags": [sub], "content_types": ["reasoning"]}
            for sub in subs]}
        for category, subs in CATEGORIES.items()]}


def topic_path(root: Path, category: str, sub: str) -> Path:
    return root / "topics" / category / sub / f"{category}.{sub}.reasoning.json"


def plain_sample(number: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"s{number}", "question": f"What is {number} + {number}?", "think": "Add them.",
            "output": f"{2 * number}, says ${{NAME}}.", "difficulty": 2, **fields}


def write_valid_tree(root: Path) -> None:
    (root / "structure.enriched.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "structure.enriched.json").write_text(json.dumps(structure_doc()), encoding="utf-8")
    places = [(category, sub) for category, subs in CATEGORIES.items() for sub in subs]
    for number, (category, sub) in enumerate(places):
        path = topic_path(root, category, sub)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([plain_sample(number), plain_sample(number + 10)]), encoding="utf-8")


def write_outside(outside: Path) -> Path:
    """A tree outside the dataset whose every file would build, each sample carrying the secret marker."""
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "identity.who.reasoning.json"
    secret.write_text(json.dumps([plain_sample(99, question=f"{SECRET}?")]), encoding="utf-8")
    for sub in ("who", "what", "arith"):
        (outside / sub).mkdir(exist_ok=True)
        for category in CATEGORIES:
            (outside / sub / f"{category}.{sub}.reasoning.json").write_text(secret.read_text(), encoding="utf-8")
    return secret


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    # A fresh folder per example (hypothesis runs many examples in one test call; tmp_path is per call).
    with tempfile.TemporaryDirectory(prefix="kubetune-hostile-") as folder:
        yield Path(folder)


NO_SURROGATES = st.characters(codec="utf-8")
plain_text = st.text(NO_SURROGATES, min_size=1, max_size=60).filter(
    lambda text: bool(text.strip()) and "${" not in text and not CLOSING_TAG.search(text))
placeholder_text = st.one_of(plain_text, st.tuples(plain_text, st.sampled_from(["${NAME}", "${SPEC}", "$${HOME}"]))
                             .map(lambda pair: f"{pair[0]} {pair[1]}"))
tag = st.text(NO_SURROGATES, min_size=1, max_size=20).filter(lambda text: re.fullmatch(r"\S(.*\S)?", text) is not None)
difficulty = st.one_of(st.integers(1, 6), st.floats(0.5, 6.49), st.sampled_from(
    ["1", " 4 ", "2.5", "3.0", "easy", "Hard", "very easy", "EXPERT", "intermediate", 5.0]))
metadata_value = st.one_of(st.text(NO_SURROGATES, min_size=1, max_size=20), st.booleans(),
                           st.integers(-(10**30), 10**30), st.floats(allow_nan=False, allow_infinity=False))
metadata = st.dictionaries(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(lambda key: key != "source"),
                           metadata_value, max_size=4)


@st.composite
def valid_samples(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids = draw(st.lists(st.from_regex(r"[a-z0-9_-]{1,80}", fullmatch=True), unique=True, max_size=6))
    samples = []
    for sample_id in ids:
        sample: dict[str, Any] = {"id": sample_id, "question": draw(placeholder_text), "think": draw(placeholder_text),
                                  "output": draw(placeholder_text), "difficulty": draw(difficulty)}
        if draw(st.booleans()):
            sample["tags"] = draw(st.lists(tag, max_size=3))
        if draw(st.booleans()):
            sample["metadata"] = draw(metadata)
        keys = draw(st.permutations(list(sample)))
        samples.append({key: sample[key] for key in keys})
    return samples


def encode_variant(value: Any, ascii_only: bool, indent: int | None, crlf: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    return ((text.replace("\n", "\r\n") if crlf else text) + ("\r\n" if crlf else "\n")).encode("utf-8")


@given(files=st.lists(valid_samples(), min_size=3, max_size=3), ascii_only=st.booleans(),
       indent=st.sampled_from([None, 0, 2]), crlf=st.booleans())
def test_every_valid_tree_builds_with_every_sample(files: list[list[dict[str, Any]]], ascii_only: bool,
                                                   indent: int | None, crlf: bool) -> None:
    with scratch() as root:
        write_valid_tree(root)
        places = [(category, sub) for category, subs in CATEGORIES.items() for sub in subs]
        for (category, sub), samples in zip(places, files, strict=True):
            topic_path(root, category, sub).write_bytes(encode_variant(samples, ascii_only, indent, crlf))
        outcome = build(root, "--placeholder", "NAME=Nova", "--spec", "a tester", "--no-stats")
        assert outcome.code == 0, outcome.stderr
        assert_clean(outcome)
        values = {"$${": "${", "${NAME}": "Nova", "${SPEC}": "a tester"}

        def substitute(text: str) -> str:
            return re.sub(r"\$\$\{|\$\{NAME\}|\$\{SPEC\}", lambda match: values[match.group()], text)

        expected: dict[tuple[str, str], None] = {}
        for samples in files:
            for sample in samples:
                assistant = f"<think>{substitute(sample['think'])}</think>\n<output>{substitute(sample['output'])}</output>"
                expected.setdefault((substitute(sample["question"]), assistant), None)
        built = [(record["messages"][0]["content"], record["messages"][1]["content"]) for record in outcome.records()]
        assert sorted(built) == sorted(expected)


folder_name = st.binary(min_size=1, max_size=40).filter(lambda name: b"/" not in name and b"\0" not in name
                                                      and name not in (b".", b".."))


@given(tree_name=folder_name, topics_name=folder_name)
def test_a_tree_under_any_folder_names_builds_with_stats(tree_name: bytes, topics_name: bytes) -> None:
    # Undecodable bytes arrive as surrogate escapes: they must reach neither stats.json nor a record undecoded.
    with scratch() as base:
        root = Path(os.fsdecode(os.path.join(os.fsencode(base), tree_name)))
        write_valid_tree(root)
        topics = Path(os.fsdecode(os.path.join(os.fsencode(root / "in"), topics_name)))
        topics.parent.mkdir()
        (root / "topics").rename(topics)
        (topics / "math" / "arith" / "math.arith.reasoning.json").unlink()  # listed in stats as missing
        argv = ["--structure", str(root / "structure.enriched.json"), "--topics-dir", str(topics),
                "--output", str(base / "out" / "train_data.jsonl")]
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), hang_guard():
            code = main(argv)
        outcome = Outcome(code, stderr.getvalue(), base / "out")
        assert outcome.code == 0, outcome.stderr
        assert_clean(outcome)
        assert len(outcome.records()) == 4
        assert len(json.loads((base / "out" / "stats.json").read_text(encoding="utf-8"))["missing_topic_files"]) == 1


# ---- hostile file contents ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10)
SAMPLE_FIELDS = ["id", "question", "think", "output", "difficulty", "tags", "metadata"]


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    """A sample with any field (or the sample, or the file's top level) replaced by any JSON value."""
    sample: dict[str, Any] = plain_sample(1, tags=["t"], metadata={"k": "v"})
    where = draw(st.sampled_from([*SAMPLE_FIELDS, "<sample>", "<top>", "<extra>"]))
    value = draw(json_values)
    if where == "<top>":
        return json.dumps(value).encode()
    if where == "<sample>":
        return json.dumps([value]).encode()
    sample[draw(st.text(max_size=8)) if where == "<extra>" else where] = value
    return json.dumps([sample]).encode()


def token_in_field(token: str) -> st.SearchStrategy[bytes]:
    """A raw JSON token spliced in as the value of one field of a sample."""
    return st.sampled_from(SAMPLE_FIELDS).map(lambda field: (
        '[{"id": "a", "question": "q?", "think": "t", "output": "o", "difficulty": 1, '
        f'"{field}": {token}' + "}]").encode())


def deep(depth: int, inside: str) -> st.SearchStrategy[bytes]:
    return st.just(("[" * depth + inside + "]" * depth).encode())


def splice(offset: int, junk: bytes) -> bytes:
    """A valid file with a few arbitrary bytes inserted at `offset`."""
    text = json.dumps([plain_sample(1), plain_sample(2, tags=["\u00e9"])], indent=1).encode()
    return text[:offset] + junk + text[offset:]


surrogate_escape = st.sampled_from(["\\ud800", "\\udfff", "\\udc80x", "\\ud83d\\ude00", "\\ude00\\ud83d", "a\\ud834"])
hostile_contents = st.one_of(
    st.binary(max_size=400),
    st.sampled_from([b"", b" \n\t", b"\xef\xbb\xbf[]", b"\xff\xfe[\x00]\x00", b"\xfe\xff\x00[\x00]", b"[", b"]",
                     b"null", b"{}", b"[]" * 2, b"[,]", b"\x00", b"[\"\x00\"]", b"[1e999999]", b"[-]"]),
    wrong_types(),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0.0", "true", "null", '"NaN"']).flatmap(token_in_field),
    st.integers(4280, 4400).map(lambda digits: "9" * digits).flatmap(token_in_field),
    st.integers(1, 5000).flatmap(lambda depth: st.sampled_from(["", "1", '{"a": 1}']).flatmap(
        lambda inside: deep(depth, inside))),
    st.integers(1, 3000).flatmap(lambda depth: token_in_field("[" * depth + "]" * depth)),
    surrogate_escape.flatmap(lambda escape: token_in_field(f'"{escape}"')),
    surrogate_escape.map(lambda escape: ('[{"id": "a", "question": "q", "think": "t", "output": "o", '
                                         f'"difficulty": 1, "metadata": {{"{escape}": 1}}}}]').encode()),
    st.just(b'[{"id": "a", "id": "b", "question": "q", "think": "t", "output": "o", "difficulty": 1}]'),
    st.integers(10_000, 300_000).map(lambda size: json.dumps([plain_sample(1, think="x" * size)]).encode()),
    st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=3)).map(lambda cut: splice(*cut)),
    st.integers(0, 200).map(lambda cut: json.dumps([plain_sample(1), plain_sample(2)]).encode()[:cut]),
)


@given(content=hostile_contents, in_structure=st.booleans())
def test_any_file_content_ends_in_a_build_or_located_errors(content: bytes, in_structure: bool) -> None:
    with scratch() as root:
        write_valid_tree(root)
        target = root / "structure.enriched.json" if in_structure else topic_path(root, "identity", "who")
        target.write_bytes(content)
        assert_clean(build(root, "--no-stats"))


@st.composite
def mutated_structure(draw: st.DrawFn) -> bytes:
    """The valid structure with one field anywhere in it replaced by any JSON value, removed, or joined by an
    unknown one."""
    document: Any = structure_doc()
    parent: Any = document
    while True:  # walk down to a random container
        keys = list(range(len(parent))) if isinstance(parent, list) else sorted(parent)
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = parent[key]
        if not isinstance(child, (dict, list)) or draw(st.booleans()):
            break
        parent = child
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace" and keys:
        parent[key] = draw(json_values)
    elif action == "remove" and keys:
        del parent[key]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(json_values)
    else:
        parent.append(draw(json_values))
    return json.dumps(document).encode()


@given(content=mutated_structure())
def test_any_structure_document_ends_in_a_build_or_located_errors(content: bytes) -> None:
    with scratch() as root:
        write_valid_tree(root)
        (root / "structure.enriched.json").write_bytes(content)
        assert_clean(build(root, "--no-stats"))


@given(content=st.one_of(mutated_structure(), hostile_contents))
def test_scaffolding_from_any_structure_creates_the_tree_or_ends_in_located_errors(content: bytes) -> None:
    with scratch() as root:
        (root / "structure.enriched.json").write_bytes(content)
        stderr, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), hang_guard():
            code = scaffold_main(["--structure", str(root / "structure.enriched.json"),
                                  "--topics-dir", str(root / "topics")])
        assert code in (0, 2) and "Traceback" not in stderr.getvalue()
        if code == 2:
            assert LOCATED_PROBLEM.search(stderr.getvalue()) and not (root / "topics").exists()
        else:
            assert len(stdout.getvalue().splitlines()) == len(list((root / "topics").rglob("*.json")))


@given(content=st.binary(max_size=300))
def test_normalize_turns_any_utf8_text_into_one_json_string_and_refuses_the_rest(content: bytes) -> None:
    with scratch() as root:
        (root / "pasted.txt").write_bytes(content)
        stderr, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = normalize_main([str(root / "pasted.txt")])
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            assert code == 2 and "is not valid UTF-8" in stderr.getvalue()
        else:
            assert code == 0 and json.loads(stdout.getvalue()) == text.replace("\r\n", "\n").rstrip()


# ---- hostile trees -----------------------------------------------------------------------------------------------

Mutation = Callable[[Path, Path], bool]  # (tree root, outside folder) -> whether the build must fail


def _replace(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fifo(path: Path) -> bool:
    _replace(path)
    os.mkfifo(path)
    return True


def unix_socket(path: Path) -> bool:
    _replace(path)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
    return True


def folder(path: Path) -> bool:
    _replace(path)
    path.mkdir()
    return True


def file_instead(path: Path) -> bool:
    _replace(path)
    path.write_text("[]", encoding="utf-8")
    return True


def dangling(path: Path) -> bool:
    _replace(path)
    path.symlink_to(path.parent / "nowhere")
    return True


def loop(path: Path) -> bool:
    _replace(path)
    path.symlink_to(path.name)
    return True


LEVELS = {  # which path of the tree each mutation hits
    "topic": lambda root: topic_path(root, "identity", "who"),
    "subcategory": lambda root: root / "topics" / "identity" / "who",
    "category": lambda root: root / "topics" / "math",
    "topics": lambda root: root / "topics",
    "structure": lambda root: root / "structure.enriched.json",
}


def escape(level: str) -> Mutation:
    def mutate(root: Path, outside: Path) -> bool:
        path = LEVELS[level](root)
        secret = write_outside(outside)
        _replace(path)
        path.symlink_to(secret if level in ("topic", "structure") else outside)
        # The structure file and the topics folder are named by flags: following those links is the user's choice.
        return level not in ("structure", "topics")
    return mutate


def inside_link(root: Path, _outside: Path) -> bool:
    """A topic file linked to another file of the same tree: allowed (its duplicates are dropped)."""
    path = topic_path(root, "identity", "what")
    _replace(path)
    path.symlink_to(Path("..") / "who" / "identity.who.reasoning.json")
    return False


def odd_name(name: str | bytes) -> Mutation:
    def mutate(root: Path, _outside: Path) -> bool:
        parent = root / "topics" / "identity"
        os.mkdir(os.path.join(os.fsencode(parent), name if isinstance(name, bytes) else os.fsencode(name)))
        return not (name.startswith(".") if isinstance(name, str) else name.startswith(b"."))
    return mutate


FOLDER_LEVELS = ("subcategory", "category", "topics")  # an empty folder there is a valid (empty) tree


def at(level: str, change: Callable[[Path], bool]) -> Mutation:
    def mutate(root: Path, _outside: Path) -> bool:
        must_fail = change(LEVELS[level](root))
        return must_fail and not (change is folder and level in FOLDER_LEVELS)
    return mutate


ODD_NAMES: list[str | bytes] = ["na\u00efve", "a\nb", "\u202eevil", "tab\there", "\u00a0", " ", ".hidden", b"\xff\xfe",
                                "x" * 255]
MUTATIONS: dict[str, Mutation] = {
    **{f"{change.__name__} as {level}": at(level, change) for level in LEVELS
       for change in (fifo, unix_socket, folder, dangling, loop)},
    **{f"symlink out of the tree as {level}": escape(level) for level in LEVELS},
    "file instead of a category folder": at("category", file_instead),
    "file instead of a subcategory folder": at("subcategory", file_instead),
    "topic file linked inside the tree": inside_link,
    **{f"folder named {name!r}": odd_name(name) for name in ODD_NAMES},
}


def coarse_first(name: str) -> int:
    """Mutations of whole folders before those of what they hold."""
    order = ("as topics", "as structure", "as category", "category folder", "as subcategory", "subcategory folder")
    return next((rank for rank, suffix in enumerate(order) if name.endswith(suffix)), len(order))


def place(name: str) -> str:
    """The path a mutation changes: one mutation per place, or the last would undo the others."""
    for level in LEVELS:
        if name.endswith((f"as {level}", f"a {level} folder")):
            return level
    return name


@given(names=st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3, unique_by=place))
def test_any_tree_ends_in_a_build_or_located_errors_and_never_reads_outside(names: list[str]) -> None:
    with scratch() as base:
        root, outside = base / "tree", base / "outside"
        write_valid_tree(root)
        must_fail = False
        for name in sorted(names, key=coarse_first):  # a later mutation never wipes out an earlier one's effect
            with contextlib.suppress(OSError):  # an earlier mutation removed (or looped) the mutation's place
                must_fail |= MUTATIONS[name](root, outside)
        outcome = build(root, "--no-stats", out_dir=base / "out")
        assert_clean(outcome)
        if must_fail:
            assert outcome.code == 2, outcome.stderr
        if outcome.code == 0:
            assert not any(SECRET in record["messages"][0]["content"] for record in outcome.records())


def test_a_valid_tree_with_only_harmless_oddities_builds() -> None:
    with scratch() as base:
        root = base / "tree"
        write_valid_tree(root)
        for name in ("topic file linked inside the tree", "folder named '.hidden'"):
            assert MUTATIONS[name](root, base / "outside") is False
        outcome = build(root, "--no-stats", out_dir=base / "out")
        assert outcome.code == 0, outcome.stderr
        assert len(outcome.records()) == 4  # 2 per file; the linked file's samples are duplicates of who's, dropped


# ---- hostile flags -----------------------------------------------------------------------------------------------

# Text a command line can carry: no NUL; undecodable bytes arrive as surrogate escapes (\udc80-\udcff).
argv_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00")
                    | st.sampled_from(["\udcff", "\udc80"]), max_size=30)
FLAG_VALUES = {
    "--eval-split": st.one_of(argv_text, st.sampled_from(["nan", "inf", "-0.1", "1", "0.999", "1e-300", "0x1"])),
    "--seed": st.one_of(argv_text, st.just("9" * 5000), st.just("-1")),
    "--max-errors": st.one_of(argv_text, st.sampled_from(["0", "-5", "1", "9" * 40])),
    "--placeholder": st.one_of(argv_text, argv_text.map(lambda value: f"NAME={value}"),
                               argv_text.map(lambda value: f"{value}=x")),
    "--name": st.one_of(argv_text, st.sampled_from(["</output>", "Nova</think>", " ", "\udcff", "a\nb"])),
    "--spec": argv_text,
    "--category": st.one_of(argv_text, st.sampled_from(["identity", "../identity", "nope"])),
    "--tokenizer-path": st.one_of(argv_text, st.sampled_from(["/dev/null", "/proc/self/fd/0", "/", "/etc/passwd"])),
}


@given(flags=st.lists(st.sampled_from(sorted(FLAG_VALUES)).flatmap(
    lambda flag: FLAG_VALUES[flag].map(lambda value: (flag, value))), min_size=1, max_size=3))
def test_any_flag_values_end_in_a_build_or_one_error(flags: list[tuple[str, str]]) -> None:
    with scratch() as root:
        write_valid_tree(root)
        argv = [part for flag, value in flags for part in (flag, value)]
        assert_clean(build(root, *argv))


OUTPUTS: dict[str, Callable[[Path], Path]] = {
    "a folder": lambda root: root,
    "under a file": lambda root: root / "structure.enriched.json" / "train_data.jsonl",
    "in a folder under a file": lambda root: root / "structure.enriched.json" / "x" / "train_data.jsonl",
    "the structure file": lambda root: root / "structure.enriched.json",
    "inside the topics folder": lambda root: root / "topics" / "train_data.jsonl",
    "a device": lambda _root: Path("/dev/null"),
    "in /proc": lambda _root: Path("/proc/kubetune-test/train_data.jsonl"),
    "in /sys (read-only)": lambda _root: Path("/sys/kubetune-test.jsonl"),
    "a FIFO": lambda root: make_fifo(root / "fifo"),
}


@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_an_unwritable_output_ends_in_one_error_and_nothing_written(output: str, tmp_path: Path) -> None:
    write_valid_tree(tmp_path)
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    target = OUTPUTS[output](tmp_path)
    after_setup = sorted(str(path) for path in tmp_path.rglob("*"))
    stderr = io.StringIO()
    argv = ["--structure", str(tmp_path / "structure.enriched.json"), "--topics-dir", str(tmp_path / "topics"),
            "--output", str(target)]
    with contextlib.redirect_stderr(stderr), hang_guard():
        code = main(argv)
    assert code == 2, stderr.getvalue()
    assert "Traceback" not in stderr.getvalue() and LOCATED_PROBLEM.search(stderr.getvalue()), stderr.getvalue()
    assert sorted(str(path) for path in tmp_path.rglob("*")) == after_setup, "the failed build left files behind"
    assert set(before) <= set(after_setup)


# ---- as users run it: a subprocess -------------------------------------------------------------------------------

def make_fifo(path: Path) -> Path:
    _replace(path)
    os.mkfifo(path)
    return path


def link_category_outside(root: Path) -> None:
    category = root / "topics" / "math"
    _replace(category)
    category.symlink_to(write_outside(root.parent / "outside").parent)


SUBPROCESS_CASES: dict[str, Callable[[Path], Any]] = {
    "a topic file that is a FIFO": lambda root: make_fifo(topic_path(root, "math", "arith")),
    "nesting deeper than the parser": lambda root: topic_path(root, "math", "arith").write_text(
        "[" * 100_000 + "]" * 100_000),
    "an integer over the digit limit": lambda root: topic_path(root, "math", "arith").write_bytes(
        b'[{"id": "a", "question": "q", "think": "t", "output": "o", "difficulty": ' + b"1" * 5000 + b"}]"),
    "a lone surrogate": lambda root: topic_path(root, "math", "arith").write_text(
        '[{"id": "a", "question": "\\ud800", "think": "t", "output": "o", "difficulty": 1}]'),
    "a category symlinked outside": link_category_outside,
}


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_as_a_command_a_hostile_tree_ends_in_located_errors_and_exit_2(case: str, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_valid_tree(root)
    SUBPROCESS_CASES[case](root)
    done = subprocess.run([sys.executable, "-P", str(SCRIPT), "--structure", str(root / "structure.enriched.json"),
                           "--topics-dir", str(root / "topics"), "--output", str(tmp_path / "out" / "t.jsonl")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and LOCATED_PROBLEM.search(done.stderr), done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("1 dataset error(s): ")
    assert not (tmp_path / "out").exists()
