"""Stage `resolve`: which loaded model version serves the request (NOT_FOUND in Triton's words otherwise).

Stages that change the target (routing by host, a traffic split) go before it and rewrite the request's
`model_name` / `model_version`; stages that wake a scaled-to-zero model go before it too.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model import ServedModel
from .call import Call


class ResolveStage:
    name = "resolve"

    def __init__(self, get: Callable[[str, str], ServedModel]) -> None:
        self._get = get  # the model manager's lookup: two dict reads

    def __call__(self, call: Call) -> None:
        request = call.request
        call.model = self._get(request.model_name, request.model_version)
