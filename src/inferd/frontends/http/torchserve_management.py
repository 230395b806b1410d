"""TorchServe's management API on a port of its own (`--torchserve-management-port`; TorchServe's is 8081), so the
scripts TorchServe users keep (`curl -X POST "localhost:8081/models?url=resnet.mar&initial_workers=2"`) work.

It is a second HTTP door with its own small route table, mapped onto the server's repository API and instance
counts; inference stays on the main port (`/predictions`). Answers and errors are TorchServe's JSON:

- `POST /models?url=NAME.mar` registers (loads) a model of the model store (the repository folders): a bare
  `NAME.mar`, or a model folder `NAME` (Triton's layout); `url` may also be a path to such a file directly in a
  repository folder. The model's name is the archive's name in the store (`model_name` may only repeat it).
  `initial_workers` sets the instance count, `batch_size` (> 1) and `max_batch_delay` (ms) dynamic batching;
  `synchronous=false` answers 202 "Processing worker updates..." before the load ends.
  200 `{"status": "Model \"m\" Version: 1.0 registered with 1 initial workers"}`.
- `PUT /models/{m}[/{version}]?min_worker=N` reloads the model with N instances (default asynchronous: 202).
- `DELETE /models/{m}[/{version}]` unloads it (or only that version, the others reloaded as they were).
- `GET /models[?limit=N&next_page_token=T]` the loaded models, `GET /models/{m}[/{version}|/all]` their description
  (modelName, modelVersion, modelUrl, runtime, minWorkers, maxWorkers, batchSize, maxBatchDelay, workers).

TorchServe's versions are strings ("1.0", the archiver's default): versions are written "N.0" for inferd's version N
(what `/predictions/{m}/N.0` takes; the archive's own MANIFEST version is not read), and a version path parameter may
be N or "N.0". Registering and unregistering need
`--model-control-mode=explicit` (TorchServe's `--enable-model-api`); every route is in the model-repository API
group, so `--http-restricted-api model-repository:...` restricts it and tenant keys (`--auth-config`) are refused.
Not served: downloading archives from URLs, `handler` / `runtime` overrides, `set-default`, worker pids and memory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import orjson

from ...config import ConfigError, ModelConfig, ModelInstanceGroup, read_config
from ...server import Server
from ...types import ErrorKind, InferError
from .app import DEFAULT_MAX_INPUT_SIZE, HttpFrontend
from .messages import QUERY_HEADER, HttpRequest, Params, Reply
from .routes import REPOSITORY, TS, Route
from .torchserve import missing_model, version_number

log = logging.getLogger("inferd.http")

__all__ = ["MANAGEMENT_ROUTES", "TorchServeManagement"]

_JSON = [(b"content-type", b"application/json")]
DEFAULT_LIMIT = 100  # TorchServe's page size for GET /models, and its largest
DEFAULT_BATCH_DELAY_MS = 100  # TorchServe's maxBatchDelay default
MAR_SUFFIX = ".mar"
_KINDS = {ErrorKind.NOT_FOUND: "ModelNotFoundException", ErrorKind.INVALID_ARGUMENT: "BadRequestException",
          ErrorKind.UNSUPPORTED: "BadRequestException", ErrorKind.UNAVAILABLE: "ServiceUnavailableException"}


def _error(code: int, kind: str, message: str) -> Reply:
    return code, orjson.dumps({"code": code, "type": kind, "message": message}, option=orjson.OPT_INDENT_2), _JSON


def _status(code: int, message: str) -> Reply:
    return code, orjson.dumps({"status": message}, option=orjson.OPT_INDENT_2), _JSON


def _json(value: Any) -> Reply:
    return 200, orjson.dumps(value, option=orjson.OPT_INDENT_2), _JSON


_PROCESSING = _status(202, "Processing worker updates...")
_API_OFF = ("registering, scaling and unregistering models need --model-control-mode=explicit (TorchServe's "
            "--enable-model-api)")


class _BadQuery(ValueError):
    """A query parameter that is not what TorchServe takes (answered 400 BadRequestException)."""


class _Query:
    def __init__(self, request: HttpRequest) -> None:
        raw = request.headers.get(QUERY_HEADER, b"").decode("latin-1")
        self.values = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def text(self, name: str) -> str:
        return self.values.get(name, "").strip()

    def number(self, name: str, default: int) -> int:
        text = self.text(name)
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise _BadQuery(f"Parameter {name} must be an integer, got '{text}'.") from None
        if value < 0:
            raise _BadQuery(f"Parameter {name} must not be negative, got {value}.")
        return value

    def switch(self, name: str, default: bool) -> bool:
        text = self.text(name).lower()
        if not text:
            return default
        if text not in ("true", "false"):
            raise _BadQuery(f"Parameter {name} must be true or false, got '{text}'.")
        return text == "true"


Handler = Callable[["TorchServeManagement", HttpRequest, Params], Awaitable[Reply]]


def _torchserve_errors(handler: Handler) -> Callable[[HttpFrontend, HttpRequest, Params], Awaitable[Reply]]:
    """The handler's InferError and bad query parameters answered in TorchServe's error form."""
    @functools.wraps(handler)
    async def wrapped(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
        try:
            return await handler(cast(TorchServeManagement, app), request, params)
        except _BadQuery as exc:
            return _error(400, "BadRequestException", str(exc))
        except InferError as exc:
            status = exc.kind.http_status
            return _error(status, _KINDS.get(exc.kind, "InternalServerException"), exc.message)
    return wrapped


def _torchserve_version(version: int) -> str:
    """A version as TorchServe writes one ("1.0"): what `/predictions/{m}/{version}` takes for it."""
    return f"{version}.0"


def _instance_count(config: ModelConfig) -> int:
    return sum(max(1, group.count) for group in config.instance_group) or 1


def _with_instances(config: ModelConfig, count: int) -> ModelConfig:
    """A copy of a loaded config with `count` instances (kept on the first group's kind and devices)."""
    scaled = ModelConfig()
    scaled.CopyFrom(config)
    first = ModelInstanceGroup()
    if config.instance_group:
        first.CopyFrom(config.instance_group[0])
    del scaled.instance_group[:]
    first.count = count
    scaled.instance_group.append(first)
    return scaled


class TorchServeManagement(HttpFrontend):
    """The management door: `MANAGEMENT_ROUTES` for `server`, whose model store is `model_store` (the repository
    folders as given; remote ones are served but not searched for `url` paths)."""

    def __init__(self, server: Server, model_store: Sequence[str], *,
                 restricted: Mapping[str, tuple[str, str]] | None = None,
                 max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> None:
        from ...repository.uris import is_remote

        super().__init__(server, routes=MANAGEMENT_ROUTES, restricted=restricted, max_input_size=max_input_size)
        self.model_store = [Path(p) for p in model_store if not is_remote(p)]
        self.urls: dict[str, str] = {}  # the url each model was registered with here
        self._jobs: set[asyncio.Task[None]] = set()  # asynchronous registrations and scalings in progress

    def _unrouted(self, method: str, path: str, allowed: list[str]) -> Reply:
        if not allowed:
            return _error(404, "ResourceNotFoundException",
                          "Requested resource is not found, please refer to API document.")
        return super()._unrouted(method, path, allowed)

    # ---- the model store ----

    def store_name(self, url: str) -> str:
        """The model a register `url` names (its name in the store); InferError NOT_FOUND / INVALID if none."""
        if "://" in url:
            raise InferError.invalid(f"Failed to download model from: {url}: inferd does not download archives; put "
                                     "the .mar in the model store (--model-repository) and register it by name")
        path = Path(url)
        if ".." in path.parts:
            raise InferError.not_found(f"Relative path is not allowed in url: {url}")
        if len(path.parts) > 1:  # a path: only to a file or folder directly in a store folder
            real = path.resolve()
            if not any(real.parent == root.resolve() for root in self.model_store):
                raise InferError.not_found(f"Model not found in model store: {url}")
        name = path.name[: -len(MAR_SUFFIX)] if path.name.endswith(MAR_SUFFIX) else path.name
        known = {row["name"] for row in self.server.repository_index()}
        if not name or name not in known:
            raise InferError.not_found(f"Model not found in model store: {url}")
        return name

    def store_config(self, name: str) -> ModelConfig:
        """The config a model of a local store folder loads with: its folder's config.pbtxt (empty when it has
        none, or for a bare .mar). A model only a remote repository holds: INVALID (its config cannot be read here
        to be changed)."""
        for root in self.model_store:
            folder = root / name
            if folder.is_dir():
                try:
                    found = read_config(folder)
                except ConfigError as exc:
                    raise InferError.invalid(str(exc)) from None
                return found if found is not None else ModelConfig()
            if (root / f"{name}{MAR_SUFFIX}").is_file():
                return ModelConfig()
        raise InferError.invalid(f"initial_workers, batch_size and max_batch_delay apply to models of a local model "
                                 f"store; register '{name}' without them, then scale it (PUT /models/{name})")

    def model_url(self, name: str) -> str:
        if name in self.urls:
            return self.urls[name]
        for root in self.model_store:
            if (root / f"{name}{MAR_SUFFIX}").is_file():
                return f"{name}{MAR_SUFFIX}"
        return name

    # ---- what the routes share ----

    def ready_versions(self, name: str) -> list[int]:
        """The model's ready versions, newest first; 404 ModelNotFoundException when it has none."""
        known = self.server.version_states(name)
        ready = sorted((v for v, (state, _) in (known[0] if known else {}).items() if state == "READY"),
                       reverse=True)
        if not ready:
            raise InferError.not_found(f"Model not found: {name}")
        return ready

    def version_of(self, name: str, given: str) -> int | None:
        """The ready version a path's version names (inferd's number, or TorchServe's "N.0" form of it)."""
        for version in self.ready_versions(name):
            if str(version) in (given, version_number(given)):
                return version
        return None

    def check_control(self) -> None:
        if self.server.model_control_mode != "explicit":
            raise InferError(ErrorKind.UNSUPPORTED, _API_OFF)

    def in_background(self, job: Callable[[], None], what: str) -> None:
        """Run a blocking load off the event loop without waiting for it; its failure goes to the log."""
        async def run() -> None:
            try:
                await asyncio.to_thread(job)
            except Exception as exc:
                log.error("TorchServe management: %s failed: %s", what, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)


# ---- the routes ----

@_torchserve_errors
async def list_models(app: TorchServeManagement, request: HttpRequest, params: Params) -> Reply:
    query = _Query(request)
    limit = query.number("limit", DEFAULT_LIMIT)
    limit = limit if 0 < limit <= DEFAULT_LIMIT else DEFAULT_LIMIT
    start = query.number("next_page_token", 0)
    names = sorted({row["name"] for row in app.server.repository_index(ready_only=True)})
    page = names[start:start + limit]
    doc: dict[str, Any] = {}
    if start + limit < len(names):
        doc["nextPageToken"] = str(start + limit)
    doc["models"] = [{"modelName": name, "modelUrl": app.model_url(name)} for name in page]
    return _json(doc)


def _describe_version(app: TorchServeManagement, name: str, version: int) -> dict[str, Any]:
    config = app.server.model_config(name, str(version))
    count = _instance_count(config)
    gpu = any(group.kind == ModelInstanceGroup.KIND_GPU for group in config.instance_group)
    batching = config.max_batch_size > 0 and config.HasField("dynamic_batching")
    delay_ms = config.dynamic_batching.max_queue_delay_microseconds // 1000 if batching else DEFAULT_BATCH_DELAY_MS
    return {"modelName": name, "modelVersion": _torchserve_version(version), "modelUrl": app.model_url(name),
            "runtime": "python", "minWorkers": count, "maxWorkers": count,
            "batchSize": max(1, int(config.max_batch_size)), "maxBatchDelay": int(delay_ms),
            "loadedAtStartup": name not in app.urls,
            "workers": [{"id": str(9000 + i), "status": "READY", "gpu": gpu} for i in range(count)]}


@_torchserve_errors
async def describe(app: TorchServeManagement, request: HttpRequest, params: Params) -> Reply:
    name, given = params["model_name"], params.get("model_version", "")
    versions = app.ready_versions(name)
    if given == "all":
        chosen = sorted(versions)
    elif given:
        version = app.version_of(name, given)
        if version is None:
            return missing_model(name, given)
        chosen = [version]
    else:
        chosen = versions[:1]  # TorchServe describes the default version: inferd's newest
    return _json([_describe_version(app, name, v) for v in chosen])


def _register_config(app: TorchServeManagement, name: str, query: _Query) -> ModelConfig | None:
    """The config a registration's parameters ask for (the store's own, changed), or None to load it as it is."""
    workers, batch_size = query.number("initial_workers", 0), query.number("batch_size", 0)
    delay_ms = query.number("max_batch_delay", -1)  # -1: not given
    if workers == 0 and batch_size <= 1 and delay_ms < 0:
        return None  # initial_workers 0 (TorchServe's default): the model's own instance count
    config = app.store_config(name)
    if workers > 0:
        config = _with_instances(config, workers)
    if batch_size > 1:
        config.max_batch_size = batch_size
        config.dynamic_batching.max_queue_delay_microseconds = 1000 * (delay_ms if delay_ms >= 0
                                                                      else DEFAULT_BATCH_DELAY_MS)
    elif delay_ms >= 0 and config.HasField("dynamic_batching"):
        config.dynamic_batching.max_queue_delay_microseconds = 1000 * delay_ms
    return config


@_torchserve_errors
async def register(app: TorchServeManagement, request: HttpRequest, params: Params) -> Reply:
    query = _Query(request)
    url = query.text("url")
    if not url:
        return _error(400, "BadRequestException", "Parameter url is required.")
    name = app.store_name(url)
    given_name = query.text("model_name")
    if given_name and given_name != name:
        return _error(400, "BadRequestException", f"model_name '{given_name}' differs from the model's name in the "
                      f"model store: inferd serves {url} as model '{name}'")
    app.check_control()
    if app.server.model_ready(name):
        version = app.ready_versions(name)[0]
        return _error(409, "ConflictStatusException", f"Model version {_torchserve_version(version)} is "
                      f"already registered for model {name}")
    config = _register_config(app, name, query)
    app.urls[name] = url
    job = functools.partial(app.server.load, name, config)
    if not query.switch("synchronous", True):
        app.in_background(job, f"registering '{name}'")
        return _PROCESSING
    try:
        await asyncio.to_thread(job)
    except InferError:
        app.urls.pop(name, None)
        raise
    version = app.ready_versions(name)[0]
    count = _instance_count(app.server.model_config(name))
    return _status(200, f"Model \"{name}\" Version: {_torchserve_version(version)} registered with {count} "
                   "initial workers")


@_torchserve_errors
async def scale(app: TorchServeManagement, request: HttpRequest, params: Params) -> Reply:
    name, given = params["model_name"], params.get("model_version", "")
    query = _Query(request)
    versions = app.ready_versions(name)
    version = versions[0]
    if given:
        found = app.version_of(name, given)
        if found is None:
            return missing_model(name, given)
        version = found
    low = query.number("min_worker", 1)
    high = query.number("max_worker", low)
    if high < low:
        return _error(400, "BadRequestException", "max_worker cannot be less than min_worker.")
    if low == 0:
        return _error(400, "BadRequestException", f"inferd keeps at least one instance of a loaded model: "
                      f"unregister it instead (DELETE /models/{name})")
    app.check_control()
    config = app.server.model_config(name, str(version))
    done = f"Workers scaled to {low} for model: {name}" + (f", version: {given}" if given else "")
    if _instance_count(config) == low:
        return _status(200, done)
    job = functools.partial(app.server.load, name, _with_instances(config, low))
    if not query.switch("synchronous", False):
        app.in_background(job, f"scaling '{name}' to {low} workers")
        return _PROCESSING
    await asyncio.to_thread(job)
    return _status(200, done)


@_torchserve_errors
async def unregister(app: TorchServeManagement, request: HttpRequest, params: Params) -> Reply:
    name, given = params["model_name"], params.get("model_version", "")
    versions = app.ready_versions(name)
    version = app.version_of(name, given) if given else None
    if given and version is None:
        return missing_model(name, given)
    app.check_control()
    rest = [v for v in versions if v != version] if version is not None else []
    if rest:  # one version of several: the others stay, reloaded as they are
        config = ModelConfig()
        config.CopyFrom(app.server.model_config(name, str(rest[0])))
        config.version_policy.specific.versions[:] = sorted(rest)
        await asyncio.to_thread(app.server.load, name, config)
    else:
        await asyncio.to_thread(app.server.unload, name)
        app.urls.pop(name, None)
    return _status(200, f"Model \"{name}\" unregistered")


_MODEL = "/models/{model_name}"
_VERSION = "/models/{model_name}/{model_version}"

# The management door's own route table (every route in the model-repository API group: admin only).
MANAGEMENT_ROUTES: list[Route] = [
    Route("GET", "/models", list_models, TS, REPOSITORY),
    Route("POST", "/models", register, TS, REPOSITORY),
    *(r for path in (_MODEL, _VERSION) for r in (
        Route("GET", path, describe, TS, REPOSITORY),
        Route("PUT", path, scale, TS, REPOSITORY),
        Route("DELETE", path, unregister, TS, REPOSITORY),
    )),
]
