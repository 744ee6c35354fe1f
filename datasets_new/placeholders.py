"""Identity placeholders: `${NAME}` and `${SPEC}` in sample text, filled from build flags.

`$${` writes a literal `${` (for samples that show shell or template syntax).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Placeholders the bundled dataset uses; a build may define more with --placeholder KEY=VALUE.
KNOWN_PLACEHOLDERS = ("NAME", "SPEC")
# Their values when none are given, both in the builder CLI and in a FineTuneRun's `spec.dataset.placeholders`
# (so that the seed's quickstart and `spec: {}` build the bundled dataset as they are).
DEFAULT_PLACEHOLDERS = {"NAME": "Nova", "SPEC": "an assistant for fine-tuning language models on Kubernetes"}
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# In a value: a character that is not one (a lone surrogate cannot be written as UTF-8), or a closing tag the builder
# itself writes around think and output (the model would learn to end its turn inside the text).
_SURROGATE = re.compile("[\ud800-\udfff]")
_CLOSING_TAG = re.compile("</(think|output)>")
_TOKEN = re.compile(r"\$\$\{|\$\{([^}\s]*)\}?")


class PlaceholderError(ValueError):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Placeholders:
    """Values for `${…}` placeholders; names in `known` without a value are an error when used."""

    values: Mapping[str, str]
    known: frozenset[str]

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> Placeholders:
        """Check every name and value; raise PlaceholderError (a ValueError) naming the first bad one."""
        for name, value in values.items():
            if not _NAME.fullmatch(name):
                raise PlaceholderError(f"placeholder name {name!r} must be upper case letters, digits and '_'",
                                       "e.g. NAME=Nova or TEAM=Ops")
            if not value.strip():
                raise PlaceholderError(f"placeholder {name} has an empty value", f"give {name} some text")
            if _SURROGATE.search(value):
                raise PlaceholderError(f"placeholder {name}'s value is not valid Unicode (a lone surrogate)",
                                       "pass the value as UTF-8 text")
            if _CLOSING_TAG.search(value):
                raise PlaceholderError(f"placeholder {name}'s value holds </think> or </output>",
                                       "the builder adds these tags; a value must not close them")
        return cls(dict(values), frozenset(KNOWN_PLACEHOLDERS) | frozenset(values))

    def substitute(self, text: str) -> str:
        """Replace every placeholder in `text`; raise PlaceholderError for an unknown or unset one."""
        if "${" not in text:  # fast path: most text has no placeholder
            return text
        return _TOKEN.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        name = match.group(1)
        if not token.endswith("}"):
            raise PlaceholderError(f"unterminated placeholder {token!r}",
                                   "close it with '}' (e.g. ${NAME}) or write $${ for a literal ${")
        if name not in self.known:
            known = ", ".join(f"${{{known}}}" for known in sorted(self.known))
            raise PlaceholderError(f"unknown placeholder ${{{name}}}",
                                   f"known placeholders: {known}; write $${{ for a literal ${{")
        value = self.values.get(name)
        if value is None:
            flag = f"--{name.lower()} TEXT or " if name in KNOWN_PLACEHOLDERS else ""
            raise PlaceholderError(f"placeholder ${{{name}}} has no value",
                                   f"pass {flag}--placeholder {name}=TEXT to the build")
        return value


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`["NAME=Nova", "SPEC=a helper"]` -> `{"NAME": "Nova", "SPEC": "a helper"}`."""
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--placeholder {item!r} must look like NAME=VALUE")
        values[name.strip()] = value
    return values
