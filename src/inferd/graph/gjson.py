"""The subset of GJSON path syntax (github.com/tidwall/gjson) that KServe's InferenceGraph conditions use.

KServe's router takes a step when `gjson.GetBytes(body, condition).Exists()`; `compile_path(text)` checks a path
once (at load: an unsupported form is a load error) and `GjsonPath.get(document)` evaluates it on parsed JSON.

Supported:
- dotted keys `a.b.c`, `\\.` for a dot inside a key, `*` and `?` wildcards in a key (the first key that matches);
- an array index `items.0`, the array length `items.#`, and `items.#.key` (that key of every element);
- queries: `#(PATH OP VALUE)` (the first element that matches) and `#(...)#` (every one), OP one of `==`, `!=`,
  `<`, `<=`, `>`, `>=`, `%` (matches a pattern with `*` and `?`), `!%`; VALUE a JSON string, number, `true`,
  `false` or `null`; `#(PATH)` alone: the element has PATH. PATH inside may be empty (the element itself) and may
  hold a nested query;
- `@this` (the current value) and multipaths `[p1,p2]` (an array of the paths' values that exist), so KServe's
  documented `[@this].#(parameters.route=="add")` works on a request object;
- `|` reads as `.`.

A comparison holds only between values of one kind (string with string, number with number, true/false with
true/false), as in GJSON.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["MISSING", "GjsonPath", "compile_path", "exists"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_OPERATORS = ("==", "!=", "<=", ">=", "!%", "<", ">", "%")


@dataclass(frozen=True, slots=True)
class _Query:
    path: GjsonPath | None
    op: str  # "" for an existence query
    value: Any
    all_matches: bool


@dataclass(frozen=True, slots=True)
class _Multi:
    paths: tuple[GjsonPath, ...]


_Part = str | int | _Query | _Multi  # a key, an index, "#" (length / map), "@this", a query, a multipath


@dataclass(frozen=True, slots=True)
class GjsonPath:
    text: str
    parts: tuple[_Part, ...]

    def get(self, document: Any) -> Any:
        """The value at this path, or MISSING."""
        return _walk(document, self.parts)

    def exists(self, document: Any) -> bool:
        return self.get(document) is not MISSING


def compile_path(text: str) -> GjsonPath:
    """Parse a GJSON path of the supported subset; ValueError (saying what is wrong) otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a GJSON path must be a non-empty string")
    return GjsonPath(text, tuple(_parse_part(p, text) for p in _split(text.strip(), text)))


def exists(path: str, document: Any) -> bool:
    return compile_path(path).exists(document)


def _split(text: str, whole: str) -> list[str]:
    """The components of a path: split at `.` and `|` outside brackets, parentheses and strings."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quote = False
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if quote:
            quote = char != '"'
        elif char == '"':
            quote = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced '{char}' in GJSON path {whole!r}")
        elif char in ".|" and depth == 0:
            parts.append("".join(current))
            current = []
            i += 1
            continue
        current.append(char)
        i += 1
    if depth != 0 or quote:
        raise ValueError(f"unclosed bracket, parenthesis or string in GJSON path {whole!r}")
    parts.append("".join(current))
    if any(p == "" for p in parts):
        raise ValueError(f"empty component in GJSON path {whole!r}")
    return parts


def _parse_part(part: str, whole: str) -> _Part:
    if part.startswith("#(") and (part.endswith(")") or part.endswith(")#")):
        all_matches = part.endswith(")#")
        return _parse_query(part[2:-2] if all_matches else part[2:-1], all_matches, whole)
    if part.startswith("[") and part.endswith("]"):
        inner = part[1:-1]
        return _Multi(tuple(compile_path(p) for p in _split_commas(inner, whole)))
    if part.startswith("@"):
        if part != "@this":
            raise ValueError(f"GJSON modifier '{part}' is not supported (only @this) in {whole!r}")
        return "@this"
    if part.startswith("{") or part.startswith("!"):
        raise ValueError(f"GJSON form '{part}' is not supported in {whole!r}")
    if part.isdigit():
        return int(part)
    return part.replace("\\.", ".").replace("\\|", "|")


def _split_commas(text: str, whole: str) -> list[str]:
    parts, depth, quote, start = [], 0, False, 0
    for i, char in enumerate(text):
        if quote:
            quote = char != '"' or text[i - 1] == "\\"
        elif char == '"':
            quote = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if any(not p.strip() for p in parts):
        raise ValueError(f"empty path in a GJSON multipath in {whole!r}")
    return [p.strip() for p in parts]


def _find_operator(text: str) -> tuple[str, str, str] | None:
    """(path, operator, value) split at the first operator outside parentheses and strings; None if none."""
    depth, quote, i = 0, False, 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if quote:
            quote = char != '"'
        elif char == '"':
            quote = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif depth == 0:
            for op in _OPERATORS:
                if text.startswith(op, i):
                    return text[:i], op, text[i + len(op):]
        i += 1
    return None


def _parse_query(text: str, all_matches: bool, whole: str) -> _Query:
    found = _find_operator(text.strip())
    if found is None:
        if not text.strip():
            raise ValueError(f"empty GJSON query in {whole!r}")
        return _Query(compile_path(text.strip()), "", None, all_matches)
    path_text, op, value_text = found[0].strip(), found[1], found[2].strip()
    try:
        value = json.loads(value_text)
    except ValueError:
        raise ValueError(f"the value {value_text!r} of a GJSON query is not a JSON string, number, true, false or "
                         f"null in {whole!r}") from None
    if isinstance(value, (list, dict)):
        raise ValueError(f"a GJSON query compares with a string, number, true, false or null in {whole!r}")
    if op in ("%", "!%") and not isinstance(value, str):
        raise ValueError(f"the pattern of '{op}' must be a string in {whole!r}")
    return _Query(compile_path(path_text) if path_text else None, op, value, all_matches)


# ---- evaluation ----

def _walk(value: Any, parts: tuple[_Part, ...]) -> Any:
    for i, part in enumerate(parts):
        if value is MISSING:
            return MISSING
        if part == "@this":
            continue
        if isinstance(part, _Multi):
            value = [found for p in part.paths if (found := p.get(value)) is not MISSING]
        elif isinstance(part, _Query):
            if not isinstance(value, list):
                return MISSING
            matches = [item for item in value if _matches(item, part)]
            if part.all_matches:
                rest = parts[i + 1:]
                return [found for item in matches if (found := _walk(item, rest)) is not MISSING]
            value = matches[0] if matches else MISSING
        elif part == "#":
            if not isinstance(value, list):
                return MISSING
            rest = parts[i + 1:]
            if not rest:
                return len(value)
            return [found for item in value if (found := _walk(item, rest)) is not MISSING]
        elif isinstance(part, int):
            if isinstance(value, list):
                value = value[part] if part < len(value) else MISSING
            elif isinstance(value, dict):
                value = value.get(str(part), MISSING)
            else:
                return MISSING
        else:
            value = _key(value, part)
    return value


def _key(value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        return MISSING
    if "*" in key or "?" in key:
        for name, item in value.items():
            if fnmatch.fnmatchcase(name, key.replace("[", "[[]")):
                return item
        return MISSING
    return value.get(key, MISSING)


def _matches(item: Any, query: _Query) -> bool:
    found = query.path.get(item) if query.path is not None else item
    if found is MISSING:
        return False
    if not query.op:
        return True
    return _compare(found, query.op, query.value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "other"


def _compare(found: Any, op: str, want: Any) -> bool:
    if op in ("%", "!%"):
        if not isinstance(found, str):
            return False
        hit = fnmatch.fnmatchcase(found, want.replace("[", "[[]"))
        return hit if op == "%" else not hit
    if _kind(found) != _kind(want):
        return False
    if op == "==":
        return bool(found == want)
    if op == "!=":
        return bool(found != want)
    if _kind(want) not in ("number", "string"):
        return False
    if op == "<":
        return bool(found < want)
    if op == "<=":
        return bool(found <= want)
    if op == ">":
        return bool(found > want)
    return bool(found >= want)
