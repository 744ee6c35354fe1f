"""The JSON text of a `train_data.jsonl` record, assembled from parts.

A record line is `json.dumps(record, ensure_ascii=False)` (docs/contracts.md, "Dataset records"). Calling the encoder
costs about 8 µs a record, most of it set-up per call, and a build writes 100k records a second; so the line is put
together from strings encoded by the encoder's own string function, with the parts that every record of a topic file
shares encoded once. The bytes are the same: unit tests compare them with `json.dumps`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# The string encoder JSONEncoder(ensure_ascii=False) uses: the same escapes, the same non-ASCII text.
_ENCODE_STRING: Callable[[str], str] = json.encoder.encode_basestring
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def json_value(value: Any) -> str:
    """`json.dumps(value, ensure_ascii=False)`, quicker for the strings, booleans and integers of metadata."""
    kind = type(value)
    if kind is str:
        return _ENCODE_STRING(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    return _ENCODE(value)  # floats and the rest keep the encoder's own rules (repr, NaN, Infinity)


def _string_array(items: Iterable[str]) -> str:
    return "[" + ", ".join([_ENCODE_STRING(item) for item in items]) + "]"


class RecordLineWriter:
    """Writes the lines of the records of one topic file: its category, subcategory, content type, tags and source
    are the same for every record."""

    def __init__(self, category: str, subcategory: str, content_type: str, base_tags: list[str], source: str) -> None:
        self._topic_members = (f'"category": {_ENCODE_STRING(category)}, '
                               f'"subcategory": {_ENCODE_STRING(subcategory)}, '
                               f'"content_type": {_ENCODE_STRING(content_type)}')
        self._base_tags = base_tags
        self._base_tags_json = _string_array(base_tags)
        # A file's samples repeat a few tag lists: each list's JSON is made once (a tuple key costs ~1/8 of making it).
        self._tags_json: dict[tuple[str, ...], str] = {}
        self._metadata_open = f'{{"source": {_ENCODE_STRING(source)}'
        self._source_only_json = self._metadata_open + "}"

    def line(self, record_id: str, difficulty: int, user: str, assistant: str, tags: list[str] | None,
             metadata: Mapping[str, Any] | None) -> str:
        """The record's line: its tags are the topic's then the sample's (first occurrence kept); its metadata is the
        source then the sample's metadata (which never holds `source`: the schema reserves it)."""
        if not tags:
            tags_json = self._base_tags_json
        else:
            tags_key = tuple(tags)
            cached = self._tags_json.get(tags_key)
            if cached is None:
                cached = self._tags_json[tags_key] = _string_array(dict.fromkeys(self._base_tags + tags))
            tags_json = cached
        if metadata:
            metadata_json = self._metadata_open + "".join(
                [f", {_ENCODE_STRING(key)}: {json_value(value)}" for key, value in metadata.items()]) + "}"
        else:
            metadata_json = self._source_only_json
        return (f'{{"id": {_ENCODE_STRING(record_id)}, {self._topic_members}, "tags": {tags_json}, '
                f'"difficulty": {difficulty}, "messages": [{{"role": "user", "content": {_ENCODE_STRING(user)}}}, '
                f'{{"role": "assistant", "content": {_ENCODE_STRING(assistant)}}}], "metadata": {metadata_json}}}')
