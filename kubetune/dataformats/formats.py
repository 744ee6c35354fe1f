"""Each format's record turned into one conversation (`[{role, content}]`, roles system/user/assistant), or the
problems that stop it, named by file:line (parquet: row and column) with a hint."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune.api.dataset_formats import DatasetFields
from kubetune.dataformats.rows import Row
from kubetune.datasets_new.errors import DatasetIssue

Message = dict[str, str]
MAX_TURNS = 1024
# Only a \uD800-\uDFFF escape makes one: such a string cannot be written as UTF-8 (train_data.jsonl, the id's hash).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
ROLES = ("system", "user", "assistant")
# ShareGPT speakers as the common exports write them.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "system": "system"}


@dataclass(frozen=True)
class Keys:
    """The record keys of one format, its defaults overridden by `spec.dataset.fields`."""

    messages: str = "messages"
    role: str = "role"
    content: str = "content"
    system: str = "system"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"

    @classmethod
    def of(cls, format_name: str, fields: DatasetFields) -> Keys:
        defaults = cls(messages="conversations", role="from", content="value") if format_name == "sharegpt" else cls()
        given = {name: value for name, value in fields.model_dump().items() if value is not None}
        return cls(**{**defaults.__dict__, **given})


Normaliser = Callable[[Row, Keys], "list[Message] | list[DatasetIssue]"]


def _record(row: Row) -> dict[str, Any] | DatasetIssue:
    if isinstance(row.value, dict):
        return row.value
    return row.issue(f"a record must be an object, got {type(row.value).__name__}", "one {…} object per record")


def _text(row: Row, record: dict[str, Any], key: str, *, required: bool) -> str | DatasetIssue | None:
    value = record.get(key)
    if value is None:
        if required:
            present = ", ".join(sorted(str(k) for k in record)[:8]) or "none"
            return row.issue(f"no {key!r} (keys: {present})", "map it with spec.dataset.fields (convert: --field) "
                             "if the file calls it something else", field=key)
        return None
    if not isinstance(value, str):
        return row.issue(f"{key!r} must be a string, got {type(value).__name__}", "put the text in a string",
                         field=key)
    return value


def messages_conversation(row: Row, keys: Keys) -> list[Message] | list[DatasetIssue]:
    return _turns_conversation(row, keys, lambda role: role if role in ROLES else None, "system, user or assistant")


def sharegpt_conversation(row: Row, keys: Keys) -> list[Message] | list[DatasetIssue]:
    return _turns_conversation(row, keys, lambda name: SHAREGPT_ROLES.get(name.lower()),
                               "human/user, gpt/assistant or system")


def _turns_conversation(row: Row, keys: Keys, role_of: Callable[[str], str | None],
                        known: str) -> list[Message] | list[DatasetIssue]:
    record = _record(row)
    if isinstance(record, DatasetIssue):
        return [record]
    turns = record.get(keys.messages)
    if not isinstance(turns, list) or not turns:
        got = "missing" if turns is None else f"a {type(turns).__name__}" if not isinstance(turns, list) else "empty"
        return [row.issue(f"{keys.messages!r} must be a non-empty list of turns ({got})",
                          "set spec.dataset.fields.messages if the file calls it something else",
                          field=keys.messages)]
    if len(turns) > MAX_TURNS:
        return [row.issue(f"{len(turns)} turns, more than {MAX_TURNS}", "split the conversation", field=keys.messages)]
    issues: list[DatasetIssue] = []
    messages: list[Message] = []
    system = _text(row, record, keys.system, required=False) if keys.system != keys.messages else None
    if isinstance(system, DatasetIssue):
        issues.append(system)
    elif system:
        messages.append({"role": "system", "content": system})
    for index, turn in enumerate(turns):
        where = f"{keys.messages}[{index}]"
        if not isinstance(turn, dict):
            issues.append(row.issue(f"{where} must be an object, got {type(turn).__name__}",
                                    f"each turn is {{{keys.role!r}: …, {keys.content!r}: …}}", field=where))
            continue
        speaker, content = turn.get(keys.role), turn.get(keys.content)
        role = role_of(speaker) if isinstance(speaker, str) else None
        if role is None:
            issues.append(row.issue(f"{where}.{keys.role} is {speaker!r}, not {known}",
                                    "tool calls are not supported; set spec.dataset.fields.role if the speaker is "
                                    "under another key", field=f"{where}.{keys.role}"))
        elif not isinstance(content, str):
            issues.append(row.issue(f"{where}.{keys.content} must be a string, got {type(content).__name__}",
                                    "multimodal content lists are not supported; set spec.dataset.fields.content if "
                                    "the text is under another key", field=f"{where}.{keys.content}"))
        else:
            messages.append({"role": role, "content": content})
    if issues:
        return issues
    return _checked(row, messages, keys.messages)


def alpaca_conversation(row: Row, keys: Keys) -> list[Message] | list[DatasetIssue]:
    record = _record(row)
    if isinstance(record, DatasetIssue):
        return [record]
    parts = {key: _text(row, record, key, required=required)
             for key, required in ((keys.system, False), (keys.instruction, True), (keys.input, False),
                                   (keys.output, True))}
    issues = [part for part in parts.values() if isinstance(part, DatasetIssue)]
    if issues:
        return issues
    system, instruction, context, output = (parts[key] for key in (keys.system, keys.instruction, keys.input,
                                                                   keys.output))
    assert isinstance(instruction, str) and isinstance(output, str)
    user = f"{instruction}\n\n{context}" if isinstance(context, str) and context.strip() else instruction
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return _checked(row, messages, keys.instruction)


def _checked(row: Row, messages: list[Message], field: str) -> list[Message] | list[DatasetIssue]:
    """A conversation the train stage can learn from: an optional system prompt first, then user and assistant
    turns alternating from a user turn to an assistant turn, none of them blank."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            what = "a second system prompt" if message["role"] == "system" else f"a {message['role']} turn"
            return [row.issue(f"turn {index + 1} after the system prompt is {what} where a {expected} turn belongs",
                              "start with the user; alternate user and assistant; a system prompt only first",
                              field=field)]
        if not message["content"].strip():
            return [row.issue(f"turn {index + 1} ({message['role']}) is blank", "drop the record or fill the turn",
                              field=field)]
    for index, message in enumerate(messages):
        if _LONE_SURROGATE.search(message["content"]):
            return [row.issue(f"the {message['role']} turn {index + 1} holds a lone UTF-16 surrogate escape "
                              "(\\uD800-\\uDFFF), which is not a character",
                              "write the character itself, or both halves of a surrogate pair", field=field)]
    if len(body) < 2 or body[-1]["role"] != "assistant":
        return [row.issue("the conversation must end with an assistant turn (nothing to learn otherwise)",
                          "add the answer, or drop the trailing user turn", field=field)]
    return messages


NORMALISERS: dict[str, Normaliser] = {
    "messages": messages_conversation,
    "sharegpt": sharegpt_conversation,
    "alpaca": alpaca_conversation,
}
