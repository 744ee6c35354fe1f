"""How a dataset that is not a topics tree is read: its format and, where a file names things its own way, the keys
that hold each part of a sample."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetune.api.base import ApiModel

DatasetFormat = Literal["tree", "messages", "sharegpt", "alpaca"]
"""`tree`: a datasets_new topics tree; `messages`: OpenAI-style `{"messages": [{role, content}]}` records;
`sharegpt`: `{"conversations": [{from, value}]}` records; `alpaca`: `{instruction, input, output[, system]}` records."""

# A top-level key of a record (or of a message in it): what JSON and parquet column names commonly are.
_KEY = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
RecordKey = Annotated[str, Field(min_length=1, max_length=64, pattern=_KEY)]


class DatasetFields(ApiModel):
    """The keys a record's parts are under, for files that do not use the format's usual names. Unset: the
    format's usual key (shown after each field)."""

    messages: RecordKey | None = None
    """The list of turns: `messages` (messages format), `conversations` (sharegpt)."""
    role: RecordKey | None = None
    """A turn's speaker: `role` (messages), `from` (sharegpt)."""
    content: RecordKey | None = None
    """A turn's text: `content` (messages), `value` (sharegpt)."""
    system: RecordKey | None = None
    """A record-level system prompt: `system` (sharegpt, alpaca)."""
    instruction: RecordKey | None = None
    """The task: `instruction` (alpaca)."""
    input: RecordKey | None = None
    """Optional context appended to the instruction: `input` (alpaca)."""
    output: RecordKey | None = None
    """The answer the model learns: `output` (alpaca)."""
