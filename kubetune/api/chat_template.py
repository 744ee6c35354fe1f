"""`spec.training.chatTemplate`: which chat template a run trains, merges, converts and gates with.

The template text is resolved before the first stage (kubetune/chat_templates.py) and its sha256 is part of the train
and evaluate keys; a template that does not parse or cannot render a conversation turn by turn fails the run there.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kubetune.api.base import ApiModel, CelRule

ChatTemplateSource = Literal["base", "chatml", "file", "inline"]
MAX_TEMPLATE_BYTES = 64 * 1024  # the biggest real templates (tool-calling ones) are ~10 KiB

# The same URI rules as types.BASE_MODEL_URI's store and local forms (which this module cannot import: types
# imports it): no control character, space, query, fragment or backslash; `..` segments refused by the rules below.
_URI_CHAR = r"[^\x00-\x20\x7f?#\\]"
TEMPLATE_FILE_URI = rf"^(s3://[a-z0-9][-a-z0-9.]{{1,61}}[a-z0-9]/{_URI_CHAR}+|file:///{_URI_CHAR}+|/{_URI_CHAR}+)$"


class ChatTemplateSpec(ApiModel):
    """The chat template: the base model's own (default; ChatML when it has none), ChatML, a file or inline text."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("!has(self.file) || has(self.source) && self.source == 'file'", "file applies only to source file",
                ".file"),
        CelRule("!has(self.inline) || has(self.source) && self.source == 'inline'",
                "inline applies only to source inline", ".inline"),
        CelRule("!has(self.source) || self.source != 'file' || has(self.file)", "source file needs file", ".file"),
        CelRule("!has(self.source) || self.source != 'inline' || has(self.inline)", "source inline needs inline",
                ".inline"),
        CelRule("!has(self.file) || !self.file.matches('(^|/)\\\\.\\\\.(/|$)')", "must not contain '..' path segments",
                ".file"),
        CelRule("!has(self.file) || !self.file.matches('%(2[eEfF]|5[cC]|25|00)')",
                "must not contain percent-encoded '.', '/', backslash, '%' or NUL (%2e, %2f, %5c, %25, %00)", ".file"),
    )

    source: ChatTemplateSource = "base"
    """`base`: the base model's own template (tokenizer_config.json / chat_template.jinja / the GGUF's), ChatML when
    it has none (the train output records which was used); `chatml`: kubetune's ChatML template; `file`: the Jinja
    file at `file`; `inline`: the Jinja text in `inline`. The template's end-of-turn marker is added to the stop
    sequences and, when missing from the vocabulary, as a special token."""
    file: Annotated[str | None, Field(default=None, max_length=1024, pattern=TEMPLATE_FILE_URI)]
    """source file: an absolute local path (`kubetune run`) or `s3://bucket/key`, at most 64 KiB of UTF-8 Jinja."""
    inline: Annotated[str | None, Field(default=None, min_length=1, max_length=MAX_TEMPLATE_BYTES)]
    """source inline: the Jinja template text (at most 65536 characters and 64 KiB of UTF-8)."""
