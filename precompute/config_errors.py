"""Configuration errors, worded for the person who edits the file.

:func:`explain` turns pydantic's validation errors into one line per problem, each naming where it is
(``[serve] port``, ``[[space.feature]] #2 (mother_age) start``, ``config model`` for a whole section), what is
wrong and ``Fix: ...``, with a did-you-mean for misspelled fields, sections and choices. The words come from
the models themselves (types, bounds, examples, defaults), so a new field needs no new message.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined

from precompute.settings import SPACE_TYPE, ConfigFile, Limit, Problems, closest


class ConfigError(ValueError):
    """The configuration is wrong; the message names the field and the fix, one line per problem."""

    def __init__(self, *problems: str) -> None:
        message = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n" + "\n".join(problems)
        super().__init__(message)
        self.problems = problems


_ABSENT: Any = object()  # a field the file leaves out
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "string_too_short"}
_NOUNS: dict[Any, tuple[str, str]] = {
    str: ("a string", "strings"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "booleans"),
}


@dataclass(frozen=True)
class _Spot:
    """Where an error is, as the file's author sees it."""

    where: str  # the table holding the field: "config" (the document), "[serve]", "[[space.feature]] #2 (b)"
    field: str | None
    info: FieldInfo | None  # None: not a field of ``owner``
    owner: type[BaseModel]
    value: Any  # the field's value in the file, or _ABSENT
    header: str | None = None  # the field's own TOML header when it holds tables: "[model]", "[[space.feature]]"
    table: str | None = None  # set when the error is about that table as a whole (its own checks)


def explain(error: ValidationError, raw: dict[str, Any]) -> list[str]:
    """One line per problem in ``error`` (raised validating ``raw`` against :class:`ConfigFile`)."""
    details = error.errors(include_url=False)
    spots = [_locate(detail["loc"], raw) for detail in details]
    # A required section left out while a misspelled one is present is one problem, said once: "[modle]".
    missing = [s.field for d, s in zip(details, spots, strict=True) if d["type"] == "missing" and s.where == "config"]
    misspelt: dict[str, str] = {}  # an unknown section -> the missing one it is most likely meant to be
    for detail, spot in zip(details, spots, strict=True):
        if detail["type"] == "extra_forbidden" and spot.where == "config" and isinstance(spot.value, dict):
            found = closest(spot.field or "", [name for name in missing if name])
            if found:
                misspelt[spot.field or ""] = found
    lines: dict[tuple[str, ...], tuple[int, str]] = {}  # first position wins, a better wording replaces it
    for detail, spot in zip(details, spots, strict=True):
        if detail["type"] == "missing" and spot.where == "config" and spot.field in misspelt.values():
            continue
        for key, rank, line in _words(detail, spot, misspelt.get(spot.field or "")):
            if key not in lines or rank < lines[key][0]:
                lines[key] = (rank, line)
    return [line for _, line in lines.values()]


def _words(detail: ErrorDetails, spot: _Spot, meant: str | None) -> Iterable[tuple[tuple[str, ...], int, str]]:
    """(what makes two errors one problem, rank: lower is the better wording, the line) for one error."""
    kind, ctx, field = detail["type"], detail.get("ctx") or {}, spot.field or ""
    at = f"{spot.where} {field}"
    if kind == "value_error" and isinstance(ctx.get("error"), Problems):
        table = spot.table or at
        for name, message in ctx["error"].problems:
            yield (table, name or "", message), 0, f"{table} {name}: {message}" if name else f"{table}: {message}"
    elif kind == "extra_forbidden":
        yield (at,), 0, _unknown(spot, meant)
    elif kind == "missing":
        yield (at,), 0, f"{at}: is required. Fix: add {_addition(spot)}"
    elif kind == "union_tag_invalid":  # [space] type
        where = spot.table or at
        yield (where, SPACE_TYPE), 0, _choice(f"{where} {SPACE_TYPE}", SPACE_TYPE, _tag_of(spot.value), _tags(spot))
    elif kind in _BOUNDS and spot.info is not None:
        fix = f"add a {spot.header} table" if spot.header else _rewrite(spot)
        yield (at,), 0, f"{at}: {_bound(kind, ctx, detail['input'], spot.info)}. Fix: {fix}"
    elif spot.info is not None:
        yield (at,), 1, _mistyped(at, spot)
    else:
        yield (at,), 1, f"{at}: {detail['msg']}. Fix: see `precompute schema` for what {spot.where} holds"


# -- where ---------------------------------------------------------------------------------------------


def _locate(loc: tuple[int | str, ...], raw: dict[str, Any]) -> _Spot:
    """Follow pydantic's error location through the models (and the raw file, for the values and names)."""
    owner: type[BaseModel] = ConfigFile
    where, dotted, value, items = "config", "", raw, list(loc)
    while items:
        name = items.pop(0)
        present = value.get(name, _ABSENT) if isinstance(value, dict) and isinstance(name, str) else _ABSENT
        info = owner.model_fields.get(name) if isinstance(name, str) else None
        if info is None:
            return _Spot(where, str(name), None, owner, present)
        many, models = _tables(info.annotation)
        if not models:  # a value: what follows in loc are union members, list indices or keys inside it
            return _Spot(where, str(name), info, owner, present)
        path = f"{dotted}.{name}" if dotted else str(name)
        header = f"[[{path}]]" if many else f"[{path}]"
        spot = _Spot(where, str(name), info, owner, present, header)
        label, child = header, present
        if many:
            index = items[0] if items else None
            if not isinstance(index, int):
                return spot  # about the list itself
            items.pop(0)
            child = present[index] if isinstance(present, list) and index < len(present) else _ABSENT
            named = child.get("name") if isinstance(child, dict) else None
            label = f"{header} #{index + 1}" + (f" ({named})" if isinstance(named, str) else "")
        if None in models:
            model = models[None]
        elif not items:
            return replace(spot, table=label)  # the tag did not pick a member
        else:
            tag = items.pop(0)
            if tag not in models:
                return replace(spot, table=label)
            model = models[str(tag)]
        if not items:
            return replace(spot, table=label)
        owner, where, dotted, value = model, label, path, child
    return _Spot(where, None, None, owner, value, table=where)


def _tables(annotation: Any) -> tuple[bool, dict[str | None, type[BaseModel]]]:
    """Whether a field holds a table, a list of tables, or one of tagged tables: (is a list, {tag: model})."""
    many = get_origin(annotation) is list
    if many:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return many, {None: annotation}
    if not _is_union(annotation):
        return False, {}
    tagged: dict[str | None, type[BaseModel]] = {}
    for member in get_args(annotation):
        model, *meta = get_args(member) if get_origin(member) is Annotated else (member,)
        tag = next((m.tag for m in meta if isinstance(m, Tag)), None)
        if tag is None or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False, {}
        tagged[tag] = model
    return many, tagged


def _every_table() -> list[tuple[str, type[BaseModel]]]:
    """Each table the file may hold, with its header: to say where a field that is out of place belongs."""
    found: list[tuple[str, type[BaseModel]]] = []

    def visit(model: type[BaseModel], dotted: str) -> None:
        for name, info in model.model_fields.items():
            many, models = _tables(info.annotation)
            path = f"{dotted}.{name}" if dotted else name
            for tag, child in models.items():
                header = f"[[{path}]]" if many else f"[{path}]"
                found.append((f'{header} with {SPACE_TYPE} = "{tag}"' if tag else header, child))
                visit(child, path)

    visit(ConfigFile, "")
    return found


# -- what and the fix ----------------------------------------------------------------------------------


def _unknown(spot: _Spot, meant: str | None) -> str:
    """An unknown field or section; ``meant`` is the required section it stands in for, if any."""
    name, known = spot.field or "", list(spot.owner.model_fields)
    if spot.owner is ConfigFile and isinstance(spot.value, dict):
        if meant:
            return f"config [{name}]: unknown section ([{meant}] is required). Fix: did you mean `[{meant}]`?"
        found = closest(name, known)
        fix = f"did you mean `[{found}]`?" if found else f"remove it (sections: {', '.join(f'[{k}]' for k in known)})"
        return f"config [{name}]: unknown section. Fix: {fix}"
    found = closest(name, known)
    if found:
        return f"{spot.where} {name}: unknown field. Fix: did you mean `{found}`?"
    homes = [header for header, model in _every_table() if model is not spot.owner and name in model.model_fields]
    fix = f"it belongs in {homes[0]}" if homes else f"remove it (known: {', '.join(known)})"
    return f"{spot.where} {name}: unknown field. Fix: {fix}"


def _addition(spot: _Spot) -> str:
    """What to add for a required field: ``path = "model"``, or a table when the field is one."""
    assert spot.info is not None
    many, models = _tables(spot.info.annotation)
    if not models:
        examples = _examples(spot.info)
        return f"`{spot.field} = {_toml(examples[0])}`" if examples else f"`{spot.field} = ...`"
    if many:
        example = spot.info.examples[0] if spot.info.examples else [{}]
        return f"`{spot.field} = {_toml(example)}`, or the same as {spot.header} tables"
    model = next(iter(models.values()))  # of tagged tables, the first is the default
    required = {name: _examples(info)[0] for name, info in model.model_fields.items() if info.is_required()}
    return f"`{spot.field} = {_toml(required)}`, or the same as a {spot.header} table"


def _mistyped(at: str, spot: _Spot) -> str:
    assert spot.info is not None
    annotation, value = _unwrap_optional(spot.info.annotation), spot.value
    if get_origin(annotation) is Literal:
        return _choice(at, spot.field or "", value, [str(choice) for choice in get_args(annotation)])
    many, models = _tables(annotation)
    if models:
        fix = f"write each one as a {spot.header} table" if many else f"write it as a {spot.header} table"
    else:
        fix = _rewrite(spot)
    return f"{at}: expected {_describe(spot.info.annotation, spot.info.metadata)}, got {value!r}. Fix: {fix}"


def _choice(at: str, field: str, value: Any, choices: Sequence[str]) -> str:
    listed = " | ".join(json.dumps(choice) for choice in choices)
    found = closest(value, list(choices)) if isinstance(value, str) else None
    fix = (
        f"did you mean `{field} = {json.dumps(found)}`?"
        if found
        else f"write e.g. `{field} = {json.dumps(choices[0])}`"
    )
    return f"{at}: {value!r} is not one of {listed}. Fix: {fix}"


def _rewrite(spot: _Spot) -> str:
    """``write e.g. `actors = 2` or `actors = "auto"```, or a did-you-mean for a near miss of a choice."""
    assert spot.info is not None
    choices = [str(c) for c in _literals(spot.info.annotation)]
    if isinstance(spot.value, str) and (found := closest(spot.value, choices)):
        return f"did you mean `{spot.field} = {json.dumps(found)}`?"
    options = [f"`{spot.field} = {_toml(example)}`" for example in _examples(spot.info)]
    return "write e.g. " + " or ".join(options) if options else "see `precompute schema`"


def _bound(kind: str, ctx: dict[str, Any], value: Any, info: FieldInfo) -> str:
    if kind == "greater_than":
        return f"must be {'positive' if ctx['gt'] == 0 else 'above ' + str(ctx['gt'])}, got {value!r}"
    if kind == "greater_than_equal":
        return f"must be {ctx['ge']} or more, got {value!r}"
    if kind == "less_than_equal":
        reason = next((m.reason for m in info.metadata if isinstance(m, Limit)), "the limit")
        return f"{value!r} is above {reason} of {ctx['le']}"
    if kind == "less_than":
        return f"must be below {ctx['lt']}, got {value!r}"
    needed = ctx.get("min_length", 1)
    return "must not be empty" if needed == 1 else f"needs at least {needed} items, got {value!r}"


def _examples(info: FieldInfo) -> list[Any]:
    """A field's example (from the model) and its default when that is of another kind (``"auto"``)."""
    found = [info.examples[0]] if info.examples else []
    default = info.default
    if default is not PydanticUndefined and default is not None and not (found and type(found[0]) is type(default)):
        found.append(default)
    return found


# -- types in words --------------------------------------------------------------------------------------


def _describe(annotation: Any, metadata: Sequence[Any] = (), plural: bool = False) -> str:
    """``int`` with ``gt=0`` is "a positive integer", ``list[str]`` "a list of strings", and so on."""
    if get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata = [*metadata, *extra]
    if _is_union(annotation):
        parts = list(dict.fromkeys(_describe(a, plural=plural) for a in get_args(annotation) if a is not type(None)))
        return " or ".join(parts) if not plural else ", ".join(parts[:-1]) + " or " * (len(parts) > 1) + parts[-1]
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(json.dumps(choice) for choice in get_args(annotation))
    if origin is list:
        return "lists" if plural else f"a list of {_describe(get_args(annotation)[0], plural=True)}"
    if origin is dict:
        return "tables" if plural else f"a table of names to {_describe(get_args(annotation)[1], plural=True)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "tables" if plural else "a table"
    singular, many = _NOUNS.get(annotation, (f"a {annotation}", f"{annotation} values"))
    if plural:
        return many
    if any(getattr(m, "gt", None) == 0 for m in metadata):
        return "a positive " + singular.split(" ", 1)[1]
    if any(getattr(m, "ge", None) == 0 for m in metadata):
        return f"{singular} (0 or more)"
    return singular


def _literals(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if _is_union(annotation):
        return [choice for member in get_args(annotation) for choice in _literals(member)]
    return []


def _unwrap_optional(annotation: Any) -> Any:
    if _is_union(annotation):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _tag_of(value: Any) -> Any:
    return value.get(SPACE_TYPE) if isinstance(value, dict) else value


def _tags(spot: _Spot) -> list[str]:
    assert spot.info is not None
    return [str(tag) for tag in _tables(spot.info.annotation)[1]]


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml(value: Any) -> str:
    """A value as TOML writes it (for the examples in the fixes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = [f"{k if _BARE_KEY.match(k) else json.dumps(k)} = {_toml(v)}" for k, v in value.items()]
        return "{ " + ", ".join(pairs) + " }"
    return repr(value)
