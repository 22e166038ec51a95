"""Personalisation: ``{{name}}`` placeholders filled per recipient, ``{{name|default}}`` with a
fallback. Parsed once per job; rendering is a join over pre-split parts."""

from __future__ import annotations

import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\|([^{}]*))?\}\}")
_BROKEN = re.compile(r"\{\{|\}\}")


class Template:
    __slots__ = ("names", "parts", "required")

    def __init__(self, parts: list[str | tuple[str, str | None]]) -> None:
        self.parts = parts
        self.names = sorted({p[0] for p in parts if isinstance(p, tuple)})
        # Placeholders used at least once without a default: every recipient needs a value.
        self.required = sorted({p[0] for p in parts if isinstance(p, tuple) and p[1] is None})

    @classmethod
    def parse(cls, text: str) -> Template:
        """Raises ValueError for a ``{{`` or ``}}`` that is not part of a placeholder."""
        parts: list[str | tuple[str, str | None]] = []
        last = 0
        for match in _PLACEHOLDER.finditer(text):
            literal = text[last : match.start()]
            if _BROKEN.search(literal):
                raise ValueError(f"malformed placeholder near {literal[-20:]!r}")
            if literal:
                parts.append(literal)
            default = match.group(2)
            parts.append((match.group(1), default.strip() if default is not None else None))
            last = match.end()
        tail = text[last:]
        if _BROKEN.search(tail):
            raise ValueError(f"malformed placeholder near {tail[:20]!r}")
        if tail:
            parts.append(tail)
        return cls(parts)

    @property
    def personal(self) -> bool:
        return bool(self.names)

    def unfillable(self, values: Mapping[str, str]) -> str | None:
        """The first placeholder these values cannot fill (empty and no default), or None."""
        for part in self.parts:
            if isinstance(part, tuple) and not values.get(part[0]) and part[1] is None:
                return part[0]
        return None

    def render(self, values: Mapping[str, str]) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(values.get(part[0]) or part[1] or "")
        return "".join(out)
