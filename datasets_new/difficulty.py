"""Difficulty normalisation, driven by `schemas/difficulty_schema.json` (range, level names, word aliases)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Normalised:
    """A difficulty level, and how it was obtained when the file did not hold a plain in-range integer."""

    level: int
    kind: str | None  # None: written as an in-range integer; else "string", "float", "word" or "clamped"


class DifficultyError(ValueError):
    pass


@dataclass(frozen=True)
class DifficultyScale:
    minimum: int
    maximum: int
    names: Mapping[int, str]
    aliases: Mapping[str, int]

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any]) -> DifficultyScale:
        levels = schema.get("x-levels", {})
        aliases = {word.lower(): int(level) for word, level in schema.get("x-aliases", {}).items()}
        return cls(int(schema["minimum"]), int(schema["maximum"]),
                   {int(level): str(info["name"]) for level, info in levels.items()}, aliases)

    def describe(self) -> str:
        return ", ".join(f"{level} {name}" for level, name in sorted(self.names.items()))

    def normalise(self, raw: Any, clamp: bool) -> Normalised:
        """Map what a topic file may hold to a level; raise DifficultyError when it cannot be read or is out of range.

        Floats round half up (2.5 -> 3). Out-of-range values are errors unless `clamp` is set, in which case they are
        moved to the nearest bound and counted as "clamped".
        """
        kind: str | None
        if type(raw) is int:
            level, kind = raw, None
        elif type(raw) is float:
            level, kind = self._round(raw, raw), "float"
        elif type(raw) is str:
            level, kind = self._parse_text(raw)
        else:
            raise DifficultyError(f"{raw!r} is not a number or a level name")
        if self.minimum <= level <= self.maximum:
            return Normalised(level, kind)
        if not clamp:
            raise DifficultyError(f"{raw!r} is outside {self.minimum}-{self.maximum}")
        return Normalised(min(max(level, self.minimum), self.maximum), "clamped")

    def _parse_text(self, raw: str) -> tuple[int, str]:
        text = raw.strip().lower()
        if text in self.aliases:
            return self.aliases[text], "word"
        try:
            number = float(text)
        except ValueError:
            words = ", ".join(sorted(self.aliases))
            raise DifficultyError(f"{raw!r} is neither a number nor a level name ({words})") from None
        return self._round(number, raw), "string"

    @staticmethod
    def _round(number: float, raw: Any) -> int:
        if not math.isfinite(number):
            raise DifficultyError(f"{raw!r} is not a finite number")
        return math.floor(number + 0.5)
