"""`kubetune dataset convert`: a messages, ShareGPT or Alpaca data file turned into a datasets_new tree (structure
file + one topic file) that the tree builder builds back into the same conversations.

A tree sample is one question and one reasoning answer, `<think>…</think>\\n<output>…</output>`; a conversation is
converted only when it has exactly that shape. A system prompt, several turns or a plain answer cannot be written as
a tree sample: each is reported (file:line, with a hint) and nothing is written — train on such a file directly with
`spec.dataset.format`. `${` in the text is written `$${`, so the builder's placeholder substitution gives it back.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kubetune.api.dataset_formats import DatasetFields
from kubetune.dataformats.build import DataFile, build_conversations
from kubetune.dataformats.formats import Message
from kubetune.datasets_new.errors import EXIT_BAD_INPUT, DatasetError, DatasetIssue, OutputError
from kubetune.datasets_new.outputs import write_files_atomically

STRUCTURE_FILE = "structure.enriched.json"
CONTENT_TYPE = "reasoning"
_NAME = re.compile(r"[a-z0-9_]+")
_REASONING = re.compile(r"<think>(?P<think>.*)</think>\n<output>(?P<output>.*)</output>", re.DOTALL)
_TAGS = ("</think>", "</output>")


def add_dataset_commands(sub: Any) -> None:
    """`kubetune dataset convert` (argparse subparsers of the `kubetune` command)."""
    dataset = sub.add_parser("dataset", help="dataset tools")
    commands = dataset.add_subparsers(dest="dataset_command", required=True)
    convert = commands.add_parser("convert", help="turn a messages, sharegpt or alpaca file into a datasets_new tree")
    convert.add_argument("--from", dest="format", required=True, choices=("messages", "sharegpt", "alpaca"))
    convert.add_argument("input", type=Path, help="a .jsonl, .json (array of records) or .parquet file")
    convert.add_argument("--out", type=Path, required=True, help="the tree's folder (must not exist or be empty)")
    convert.add_argument("--category", default="imported", help="category of every sample (default: imported)")
    convert.add_argument("--subcategory", default="general", help="subcategory of every sample (default: general)")
    convert.add_argument("--difficulty", type=int, choices=range(1, 7), default=3,
                         help="difficulty 1-6 of every sample (the source has none; default 3, medium)")
    convert.add_argument("--field", action="append", default=[], metavar="PART=KEY",
                         help="the key a record part is under, as spec.dataset.fields (e.g. messages=dialog); "
                              "repeatable")
    convert.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        written = convert_to_tree(args.format, args.input, args.out, category=args.category,
                                  subcategory=args.subcategory, difficulty=args.difficulty,
                                  fields=field_mapping(args.field))
    except DatasetError as error:
        print(error.report(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutputError as error:  # --out under a file or FIFO, a dangling link, a read-only place: nothing written
        print(error.issue.format(), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {written} sample(s) to {args.out} (build it with build_train_jsonl.py or spec.dataset.uri)")
    return 0


def field_mapping(pairs: list[str]) -> DatasetFields:
    """`--field PART=KEY` flags as spec.dataset.fields; DatasetError for a malformed one or an unknown part."""
    mapping = dict(pair.partition("=")[::2] for pair in pairs)
    try:
        return DatasetFields.model_validate(mapping)
    except ValidationError as error:
        first = error.errors()[0]
        part = ".".join(str(p) for p in first["loc"]) or "?"
        raise DatasetError([DatasetIssue("--field", f"{part}: {first['msg']}",
                                         f"PART is one of {', '.join(DatasetFields.model_fields)}; KEY a plain "
                                         "record key, e.g. --field messages=dialog")]) from None


def convert_to_tree(format_name: str, source: Path, out: Path, *, category: str, subcategory: str,
                    difficulty: int, fields: DatasetFields | None = None) -> int:
    """Write the tree for `source` into `out`; returns the number of samples. Raises DatasetError (nothing
    written) for bad names, an occupied `out`, bad records or conversations a tree cannot hold."""
    for flag, name in (("--category", category), ("--subcategory", subcategory)):
        if not _NAME.fullmatch(name):
            raise DatasetError([DatasetIssue(flag, f"{name!r} is not a tree name", "use lowercase a-z, 0-9 and _")])
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError([DatasetIssue(out.as_posix(), "exists and is not an empty folder",
                                         "name a new folder: nothing is overwritten")])
    if not source.is_file():
        raise DatasetError([DatasetIssue(source.as_posix(), "is not a file", "pass a .jsonl, .json or .parquet file")])
    build = build_conversations(format_name, [DataFile(source, source.as_posix())], fields or DatasetFields(),
                                eval_split=0.0)
    samples: list[dict[str, Any]] = []
    issues: list[DatasetIssue] = []
    for number, conversation in enumerate(build.train, start=1):
        sample = _sample(conversation.messages, f"sample_{number:06d}", difficulty)
        if isinstance(sample, str):
            issues.append(DatasetIssue(source.as_posix(), f"conversation {number} ({conversation.id}) {sample}",
                                       "train on this file with spec.dataset.format instead of converting it"))
        else:
            samples.append(sample)
    if issues:
        raise DatasetError(issues[:50], len(issues))
    structure = {"version": 1, "name": _NAME.sub("", source.stem.lower()) or "imported",
                 "description": f"Converted from {source.name} ({format_name})",
                 "categories": [{"name": category, "description": f"Samples converted from {source.name}",
                                 "tags": [category], "subcategories": [{
                                     "name": subcategory, "description": f"Samples converted from {source.name}",
                                     "tags": [subcategory], "content_types": [CONTENT_TYPE]}]}]}
    topic = out / "topics" / category / subcategory / f"{category}.{subcategory}.{CONTENT_TYPE}.json"
    write_files_atomically({
        out / STRUCTURE_FILE: [(json.dumps(structure, indent=2) + "\n").encode()],
        topic: [(json.dumps(samples, indent=2, ensure_ascii=False) + "\n").encode()],
    })
    return len(samples)


def _sample(messages: list[Message], sample_id: str, difficulty: int) -> dict[str, Any] | str:
    """The tree sample of a conversation, or why it has none."""
    if messages[0]["role"] == "system":
        return "has a system prompt, which a tree sample cannot hold"
    if len(messages) != 2:
        return f"has {len(messages) // 2} exchanges; a tree sample is one question and one answer"
    answer = _REASONING.fullmatch(messages[1]["content"])
    if answer is None or any(tag in answer[part] for part in ("think", "output") for tag in _TAGS) or \
            not answer["think"].strip() or not answer["output"].strip():
        return "has an answer not of the form <think>…</think>\\n<output>…</output>, which tree samples are"
    return {"id": sample_id, "question": _escaped(messages[0]["content"]), "think": _escaped(answer["think"]),
            "output": _escaped(answer["output"]), "difficulty": difficulty}


def _escaped(text: str) -> str:
    """`${` written `$${`: the builder substitutes placeholders and turns `$${` back into `${`."""
    return text.replace("${", "$${")
