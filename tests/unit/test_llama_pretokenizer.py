"""The llama.cpp pre-tokenizer name is derived from the tokenizer.json's own pre-tokenizer definition."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.llama.errors import ConversionError
from kubetune.llama.tokenizer_export import LLAMA3_REGEX, QWEN2_REGEX, pre_tokenizer_name


def split_then_bytes(regex: str) -> dict[str, Any]:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    }


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize(
    ("pre_tokenizer", "expected"),
    [
        pytest.param(split_then_bytes(QWEN2_REGEX), "qwen2", id="qwen2-regex"),
        pytest.param(split_then_bytes(LLAMA3_REGEX), "llama-bpe", id="llama3-regex"),
        pytest.param(BYTE_LEVEL, "gpt-2", id="plain-byte-level"),
        pytest.param(
            {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
            "smollm",
            id="smollm-digits-then-byte-level",
        ),
    ],
)
def test_known_pre_tokenizers_map_to_llama_cpp_names(pre_tokenizer: dict[str, Any], expected: str) -> None:
    assert pre_tokenizer_name({"pre_tokenizer": pre_tokenizer}) == expected


def test_an_unknown_split_regex_is_an_error_that_names_the_regex() -> None:
    regex = r"\p{N}{1,5}|\s+"
    with pytest.raises(ConversionError, match="unknown pre-tokenizer") as error:
        pre_tokenizer_name({"pre_tokenizer": split_then_bytes(regex)})
    assert repr(regex) in str(error.value)


@pytest.mark.parametrize(
    "pre_tokenizer",
    [
        pytest.param({**BYTE_LEVEL, "add_prefix_space": True}, id="byte-level-with-prefix-space"),
        pytest.param(
            {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False}, BYTE_LEVEL]},
            id="grouped-digits",
        ),
        pytest.param({"type": "Whitespace"}, id="whitespace"),
    ],
)
def test_other_pre_tokenizer_definitions_are_errors(pre_tokenizer: dict[str, Any]) -> None:
    with pytest.raises(ConversionError, match="unknown pre-tokenizer"):
        pre_tokenizer_name({"pre_tokenizer": pre_tokenizer})
