"""Where a field of a `config.pbtxt` is written: field paths (`input[1].dims`, `parameters[canary]`) to lines.

Protobuf's Python text format keeps no positions, so the text is walked once more with its own tokenizer. Every
field is recorded as `name[i]` (its i-th occurrence in its message); a map entry (`parameters`, `input_map`) also
as `name[KEY]`.
"""

from __future__ import annotations

import re

from google.protobuf import text_format

__all__ = ["field_lines", "line_of"]

_CLOSERS = {"{": "}", "<": ">"}


class _Walker:
    def __init__(self, text: str) -> None:
        self.tok = text_format.Tokenizer(text.splitlines())
        self.lines: dict[str, int] = {}

    def record(self, path: str, line: int) -> None:
        self.lines.setdefault(path, line)

    def block(self, prefix: str, closer: str | None) -> str | None:
        """Fields until `closer` (None: the end); returns the entry's `key` when it is a map entry."""
        tok = self.tok
        counts: dict[str, int] = {}
        key: str | None = None
        while not tok.AtEnd():
            if tok.token == closer:
                tok.NextToken()
                return key
            name, line = tok.token, tok._line + 1
            tok.NextToken()
            tok.TryConsume(":")
            if tok.token == "[":
                tok.NextToken()
                while not tok.AtEnd() and tok.token != "]":
                    self.value(prefix, name, tok._line + 1, counts)
                    tok.TryConsume(",")
                tok.NextToken()
                self.record(f"{prefix}{name}[0]", line)  # an empty list: its own line
            else:
                found = self.value(prefix, name, line, counts)
                if name == "key" and found is not None:
                    key = found
            if not tok.TryConsume(","):
                tok.TryConsume(";")
        return key

    def value(self, prefix: str, name: str, line: int, counts: dict[str, int]) -> str | None:
        tok = self.tok
        index = counts.get(name, 0)
        counts[name] = index + 1
        path = f"{prefix}{name}[{index}]"
        self.record(path, line)
        if tok.token in _CLOSERS:
            closer = _CLOSERS[tok.token]
            tok.NextToken()
            key = self.block(path + ".", closer)
            if key is not None:
                self.record(f"{prefix}{name}[{key}]", line)
            return None
        if tok.token[:1] in ("'", '"'):
            return str(tok.ConsumeString())
        text = str(tok.token)
        tok.NextToken()
        return text


def field_lines(text: str) -> dict[str, int]:
    """Every field path of a config text with the (1-based) line it starts on; what cannot be walked (the text
    does not parse) is left out."""
    walker = _Walker(text)
    try:
        walker.block("", None)
    except text_format.ParseError:
        pass
    return walker.lines


_COMPONENT = re.compile(r"([^.\[\]]+)(\[[^\]]*\])?")


def line_of(lines: dict[str, int], field: str) -> int | None:
    """The line of `field` (`input[1].dims`, `version_policy.latest`: a component without an index is the first),
    else of the nearest enclosing field that is written; None when none is (auto-complete made it)."""
    parts = [m.group(1) + (m.group(2) or "[0]") for m in _COMPONENT.finditer(field)]
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None
