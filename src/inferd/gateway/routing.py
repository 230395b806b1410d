"""Routing by host and by path: which model a request means when its path does not say, or says it twice.

Users reach a model the way their old ingress made them, with no ingress in front:

- `--host-routing {model}.models.example.com`: a request whose `Host` (HTTP) or `:authority` (gRPC) matches the
  pattern names the model — port stripped, compared case-insensitively, the `{model}` part taken in lower case
  (DNS names have no case). A host that does not match is ordinary routing; one that matches but names no model
  is 404 (see `HostRouting`).
- KServe's path form `/serving/{namespace}/{name}/...`: the prefix is stripped and `{name}` names the model
  (`split_serving_path`); it takes precedence over the host.
- A model named twice (a path's model, and a different one from the host or the prefix) is a clear 400: one
  request, one model (`routed_model`).

HTTP routes are answered from the one route table (frontends/http/routes.py), which applies these rules before a
handler runs, so V2, V1, Seldon and TorchServe routes, inference or not, agree. gRPC's ModelInfer gets them from
the `route` pipeline stage (`RouteStage`, installed only with `--host-routing`): before `resolve`, it takes the
model from the call's `:authority` when ModelInfer's `model_name` is empty.
"""

from __future__ import annotations

import re

from ..pipeline.call import Call
from ..types import InferError

__all__ = ["AUTHORITY", "SERVING_PREFIX", "HostRouting", "RouteStage", "routed_model", "split_serving_path"]

SERVING_PREFIX = "/serving/"
# The pseudo-header under which a gRPC front door hands the call's authority to the pipeline.
AUTHORITY = ":authority"
_PLACEHOLDER = "{model}"


class HostRouting:
    """A host pattern such as `{model}.models.example.com`: exactly one `{model}`, which matches one DNS label
    (no dots). `model_of(host)` is the model a host names, or None when the host does not match."""

    def __init__(self, pattern: str) -> None:
        pattern = pattern.strip().lower()
        if pattern.count(_PLACEHOLDER) != 1:
            raise ValueError(f"--host-routing takes a host pattern with one '{_PLACEHOLDER}', such as "
                             f"'{{model}}.models.example.com'; got '{pattern}'")
        if any(c in pattern for c in "/: ") or "{" in pattern.replace(_PLACEHOLDER, ""):
            raise ValueError(f"--host-routing takes a host name pattern (no scheme, port or path); got '{pattern}'")
        head, _, tail = pattern.partition(_PLACEHOLDER)
        self.pattern = pattern
        self._regex = re.compile(re.escape(head) + r"([^.]+)" + re.escape(tail))

    def model_of(self, host: str | None) -> str | None:
        if not host:
            return None
        found = self._regex.fullmatch(_hostname(host))
        return None if found is None else found.group(1)


def _hostname(host: str) -> str:
    """A Host / :authority value without its port, in lower case ("[::1]:8000" -> "[::1]")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def split_serving_path(path: str) -> tuple[str, str] | None:
    """KServe's `/serving/{namespace}/{name}/rest...` as (name, "/rest..."); None when the path is not of that
    form (too short, or an empty part)."""
    parts = path[len(SERVING_PREFIX):].split("/", 2)
    if len(parts) < 3 or not parts[0] or not parts[1] or not parts[2]:
        return None
    return parts[1], "/" + parts[2]


def routed_model(named: str, implied: str, source: str) -> str:
    """The model of a request whose path names `named` ("" for none) and whose host / prefix names `implied`
    (`source` says which, for the error): a conflict is INVALID_ARGUMENT."""
    if not named:
        return implied
    if named != implied:
        raise InferError.invalid(f"the request names model '{named}' but its {source} names model '{implied}': "
                                 "name one model, or agree")
    return named


class RouteStage:
    """Pipeline stage `route` (before `resolve`): a gRPC call's `:authority` names the model when the request
    has none; a request naming another model than its authority is INVALID_ARGUMENT."""

    name = "route"
    before = "resolve"

    def __init__(self, hosts: HostRouting) -> None:
        self._hosts = hosts

    def __call__(self, call: Call) -> None:
        authority = call.context.header(AUTHORITY)
        model = self._hosts.model_of(authority)
        if model is not None:
            request = call.request
            request.model_name = routed_model(request.model_name, model, f"authority '{authority}'")
