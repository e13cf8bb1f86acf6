"""Key templates: how a row's feature values become its canonical key, and back.

A template such as ``{is_male}:{mother_age}:{plurality}:{gestation_weeks}`` is literal text around named
fields. Rendering joins the formatted values; parsing matches the literal text back out. Categorical values
may not contain the template's literal text, so parsing is never ambiguous (checked when the config loads).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class KeyTemplate:
    text: str
    fields: tuple[str, ...]
    literals: tuple[str, ...]  # len(fields) + 1 pieces: before, between and after the fields
    _pattern: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> KeyTemplate:
        fields = tuple(_FIELD.findall(text))
        literals = tuple(_FIELD.split(text)[::2])
        if not fields:
            raise ValueError(f"key template {text!r} names no field: write e.g. '{{user_id}}'")
        if len(set(fields)) != len(fields):
            raise ValueError(f"key template {text!r} names a field twice")
        if any(not piece for piece in literals[1:-1]):
            raise ValueError(f"key template {text!r} needs a separator between fields, e.g. '{{a}}:{{b}}'")
        body = "".join(
            re.escape(literals[i]) + (f"(?P<{fields[i]}>.+?)" if i < len(fields) else "") for i in range(len(literals))
        )
        return cls(text, fields, literals, re.compile(f"^{body}$", re.DOTALL))

    @classmethod
    def joined(cls, fields: list[str], separator: str = ":") -> KeyTemplate:
        return cls.parse(separator.join("{" + f + "}" for f in fields))

    def render(self, values: dict[str, str]) -> str:
        out = [self.literals[0]]
        for name, literal in zip(self.fields, self.literals[1:], strict=True):
            out.append(values[name])
            out.append(literal)
        return "".join(out)

    def split(self, key: str) -> dict[str, str] | None:
        """The raw text of each field, or None when ``key`` does not have the template's shape."""
        match = self._pattern.match(key)
        return match.groupdict() if match else None

    @cached_property
    def separator(self) -> str | None:
        """The one literal between every two fields when there is nothing before the first nor after the
        last (``{a}:{b}:{c}``), else None."""
        inner = set(self.literals[1:-1])
        return inner.pop() if len(inner) == 1 and not self.literals[0] and not self.literals[-1] else None

    def parts(self, key: str) -> Sequence[str] | None:
        """The raw text of each field in the template's order (:meth:`split`'s values), or None.

        With one separator, one ``str.split``: the pattern's fields are lazy and non-empty, so each ends at
        the first separator after at least one character, which is where ``str.split`` cuts. One non-empty
        part per field from ``str.split`` are the pattern's parts; anything else (a label holding the
        separator) is left to the pattern."""
        separator = self.separator
        if separator is not None:
            split = key.split(separator)
            if len(split) == len(self.fields) and all(split):
                return split
        match = self._pattern.match(key)
        return match.groups() if match else None

    def separators(self) -> set[str]:
        return {piece for piece in self.literals if piece}
