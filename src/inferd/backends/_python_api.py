"""inferd's own Python model API: a class with `load()` and `predict(inputs) -> outputs`, hooks optional.

```python
class Model:
    def load(self): ...                                   # optional; once, in the instance process
    def preprocess(self, inputs): return inputs           # optional
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def postprocess(self, outputs): return outputs        # optional
    def unload(self): ...                                 # optional
```

Any of these may be `async def`: they then run on an event loop the instance owns (one per instance process,
kept for its life, so a client or pool made in `load` stays usable in `predict`). The constructor takes no
argument, or one: the model config as a dict in Triton's JSON form (what `/v2/models/{m}/config` answers).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from ..config import ConfigError, ModelConfig, config_to_json


def _takes_argument(cls: type) -> bool:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # a class whose signature Python cannot tell (built in C): no arguments
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


class ClassModel:
    """One instance of the user's class and the event loop its coroutines run on."""

    def __init__(self, cls: type, config: ModelConfig) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._model = cls(config_to_json(config)) if _takes_argument(cls) else cls()
        except Exception as exc:
            self._loop.close()
            raise ConfigError(f"{cls.__name__}() raised {type(exc).__name__}: {' '.join(str(exc).split())}") from None
        self._name = cls.__name__
        self._preprocess = getattr(self._model, "preprocess", None)
        self._predict = self._model.predict
        self._postprocess = getattr(self._model, "postprocess", None)

    def _run(self, value: Any) -> Any:
        return self._loop.run_until_complete(value) if inspect.isawaitable(value) else value

    def load(self) -> None:
        load = getattr(self._model, "load", None)
        if load is None:
            return
        try:
            self._run(load())
        except Exception as exc:
            raise ConfigError(f"{self._name}.load() raised {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())}") from None

    def run(self, inputs: dict[str, Any]) -> Any:
        if self._preprocess is not None:
            inputs = self._run(self._preprocess(inputs))
        outputs = self._run(self._predict(inputs))
        if self._postprocess is not None:
            outputs = self._run(self._postprocess(outputs))
        return outputs

    def close(self) -> None:
        try:
            unload = getattr(self._model, "unload", None)
            if unload is not None:
                self._run(unload())
        finally:
            self._loop.close()
