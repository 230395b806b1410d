"""Render deploy/helm/inferd for schema checks where no `helm` binary can be installed: substitute `.Values`,
`.Release` and `.Chart` into the templates.

This reads only the few forms the chart is written in, and fails on any other: `{{ X }}` and `{{ X | quote }}`
anywhere in a line; `{{- toYaml X | nindent N }}`, `{{- if X }}`, `{{- if not X }}`, `{{- else }}` and `{{- end }}`
each alone on its line; X is `.Values.a.b`, `.Release.Name`, `.Release.Namespace` or `.Chart.Name|Version|AppVersion`.
Helm itself lints the chart (tests/integration/test_deploy_manifests.py), so what Helm renders is checked there; this
keeps the templates simple enough to be read this way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_VALUE = r"\.[A-Za-z][\w.]*"
_INLINE = re.compile(r"\{\{-?\s*(" + _VALUE + r")\s*(\|\s*quote\s*)?-?\}\}")
_TO_YAML = re.compile(r"^\s*\{\{-\s*toYaml\s+(" + _VALUE + r")\s*\|\s*nindent\s+(\d+)\s*\}\}\s*$")
_IF = re.compile(r"^\s*\{\{-\s*if\s+(not\s+)?(" + _VALUE + r")\s*\}\}\s*$")
_ELSE = re.compile(r"^\s*\{\{-\s*else\s*\}\}\s*$")
_END = re.compile(r"^\s*\{\{-\s*end\s*\}\}\s*$")


def _lookup(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.lstrip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _text(value: Any) -> str:
    """Go's text/template printing of a value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _render_template(text: str, context: dict[str, Any], where: str) -> str:
    out: list[str] = []
    shown = [True]  # one entry per open `if` (and the template itself)
    for number, line in enumerate(text.splitlines(), 1):
        if match := _IF.match(line):
            truth = bool(_lookup(context, match.group(2)))
            shown.append(shown[-1] and (truth != bool(match.group(1))))
            continue
        if _ELSE.match(line):
            shown[-1] = shown[-2] and not shown[-1]
            continue
        if _END.match(line):
            shown.pop()
            continue
        if not shown[-1]:
            continue
        if match := _TO_YAML.match(line):
            value = _lookup(context, match.group(1))
            block = yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")
            block = block.removesuffix("\n...")
            out.extend(" " * int(match.group(2)) + row for row in block.splitlines())
            continue
        line = _INLINE.sub(lambda m: json.dumps(_text(_lookup(context, m.group(1)))) if m.group(2)
                           else _text(_lookup(context, m.group(1))), line)
        if "{{" in line:
            raise ValueError(f"{where}:{number}: a template form this renderer does not read: {line.strip()}")
        out.append(line)
    if len(shown) != 1:
        raise ValueError(f"{where}: an `if` without its `end`")
    return "\n".join(out) + "\n"


def render_chart(chart: Path, values: dict[str, Any], release: str = "release",
                 namespace: str = "default") -> list[dict[str, Any]]:
    """The manifests of every template of `chart` (files starting with '_' are helpers, left out)."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    context = {"Values": values, "Release": {"Name": release, "Namespace": namespace},
               "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta.get("appVersion")}}
    docs: list[dict[str, Any]] = []
    for template in sorted((chart / "templates").glob("*.yaml")):
        rendered = _render_template(template.read_text(), context, str(template))
        docs.extend(d for d in yaml.safe_load_all(rendered) if d)
    return docs
