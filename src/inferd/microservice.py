"""`inferd microservice`: a Seldon Core 1.x user class served stand-alone, as `seldon-core-microservice` serves it.

    inferd microservice MyModel --service-type MODEL --parameters '[{"name":"k","value":"3","type":"INT"}]'

The same command line as Seldon's (positional interface name, `--service-type`, `--parameters`, the
PREDICTIVE_UNIT_* environment variables, ports 9000 / 5000 / 6000); Seldon's gunicorn and tracing flags are
accepted and ignored. The HTTP port speaks Seldon's protocol and V2; the gRPC port speaks V2 gRPC (not Seldon's
own gRPC services). The class runs in this process, as in Seldon: it is created once, `load()` is called once,
and `--threads` (default 1, as Seldon's) calls may run at once, whichever protocol they came in by.

Behind the scenes the class is one model (backend `seldon`) in a temporary repository, and every call — Seldon's
routes as much as V2 HTTP and gRPC — is a request of the core's one pipeline: checks, statistics, metrics,
traces and queueing alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ._version import __version__

log = logging.getLogger("inferd.microservice")

DEFAULT_HTTP_PORT = 9000  # Seldon's defaults
DEFAULT_GRPC_PORT = 5000
DEFAULT_METRICS_PORT = 6000

_DESCRIPTION = "serve a Seldon Core language-wrapper class (seldon-core-microservice's command line)"
_EXAMPLES = """examples:
  inferd microservice MyModel                      # MyModel.py holding class MyModel, as Seldon
  inferd microservice my_package.models:Iris --service-type MODEL --http-port 9000
  inferd microservice Router --service-type ROUTER --parameters '[{"name":"n","value":"2","type":"INT"}]'
"""
# seldon-core-microservice flags that tune its gunicorn / Flask / tracing setup: accepted, ignored.
_IGNORED_FLAGS = ("--workers", "--max-requests", "--max-requests-jitter", "--keepalive", "--pidfile",
                  "--grpc-threads", "--grpc-workers", "--tracing", "--debug", "--access-log")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def add_microservice_parser(subparsers: Any) -> None:
    """Register `microservice` on an argparse sub-command set; `args.func(args)` then runs it."""
    parser = subparsers.add_parser("microservice", help=_DESCRIPTION, description=_DESCRIPTION, epilog=_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_microservice_arguments(parser)
    parser.set_defaults(func=microservice_command)


def add_microservice_arguments(parser: argparse.ArgumentParser) -> None:
    from .compat.seldon.component import SERVICE_TYPES

    parser.add_argument("interface_name", metavar="INTERFACE",
                        help="the user class: MODULE:CLASS, MODULE.CLASS, or NAME (module NAME, class NAME)")
    parser.add_argument("--service-type", choices=SERVICE_TYPES, default="MODEL",
                        help="which method the V2 model calls (every Seldon route is served whatever the type)")
    parser.add_argument("--parameters", default=os.environ.get("PREDICTIVE_UNIT_PARAMETERS", "[]"),
                        help="JSON list of {name, value, type} given to the class's constructor "
                        "(type INT, FLOAT, DOUBLE, STRING or BOOL)")
    parser.add_argument("--persistence", nargs="?", type=int, const=1, default=0,
                        help="deprecated in Seldon; refused when set (state is not persisted)")
    parser.add_argument("--model-name", default="",
                        help="name of the V2 model (default: the class name in lower case)")
    parser.add_argument("--http-port", type=int,
                        default=_env_int("PREDICTIVE_UNIT_HTTP_SERVICE_PORT", DEFAULT_HTTP_PORT))
    parser.add_argument("--grpc-port", type=int,
                        default=_env_int("PREDICTIVE_UNIT_GRPC_SERVICE_PORT", DEFAULT_GRPC_PORT),
                        help="V2 gRPC port (0: no gRPC)")
    parser.add_argument("--metrics-port", type=int,
                        default=_env_int("PREDICTIVE_UNIT_METRICS_SERVICE_PORT", DEFAULT_METRICS_PORT),
                        help="Prometheus /metrics port (0: no metrics)")
    parser.add_argument("--http-address", default="0.0.0.0")
    parser.add_argument("--grpc-address", default="0.0.0.0")
    parser.add_argument("--metrics-address", default=None, help="default: --http-address")
    parser.add_argument("--threads", type=int, default=_env_int("GUNICORN_THREADS", 1),
                        help="how many calls of the class may run at once (default 1, as Seldon)")
    parser.add_argument("--single-threaded", type=int, default=_env_int("FLASK_SINGLE_THREADED", 0),
                        help="1: one call at a time (the same as --threads 1)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        default=os.environ.get("SELDON_LOG_LEVEL", "INFO").upper())
    parser.add_argument("--http-max-input-size", type=int, default=64 * 1024 * 1024,
                        help="largest HTTP request body in bytes")
    parser.add_argument("--exit-timeout-secs", type=float, default=30.0,
                        help="on shutdown, how long in-flight requests may take to finish")
    from .cli import add_auth_arguments
    from .pipeline.plugins import add_pipeline_stage_argument

    add_auth_arguments(parser)
    add_pipeline_stage_argument(parser)
    for flag in _IGNORED_FLAGS:
        parser.add_argument(flag, nargs="?", const="1", default=None, help=argparse.SUPPRESS)


def _install_logging(level: str) -> None:
    from .observability import LOG_CONTROL

    LOG_CONTROL.install(verbose=1 if level == "DEBUG" else 0, info=level in ("DEBUG", "INFO"),
                        warning=level != "ERROR", error=True)


def _write_repository(model_name: str, threads: int) -> Path:
    """A repository of one model whose config names the registered component; the backend completes its I/O.
    As many instances as the class may take calls at once (`--threads`): every call goes through the core."""
    from .backends.seldon import COMPONENT_PARAMETER

    root = Path(tempfile.mkdtemp(prefix="inferd-microservice-"))
    (root / model_name / "1").mkdir(parents=True)
    (root / model_name / "config.pbtxt").write_text(
        f'backend: "seldon"\nmax_batch_size: 0\ninstance_group [{{ count: {threads} kind: KIND_CPU }}]\n'
        f'parameters {{ key: "{COMPONENT_PARAMETER}" value {{ string_value: "{model_name}" }} }}\n')
    return root


def microservice_command(args: argparse.Namespace) -> int:
    from .backends.seldon import register_component, unregister_component
    from .compat.seldon.component import SeldonComponent, parse_parameters
    from .manager import check_model_name
    from .server import Server
    from .types import InferError

    _install_logging(args.log_level)
    if args.persistence:
        log.error("--persistence is not supported (it is deprecated in Seldon Core): keep state elsewhere")
        return 1
    for flag in _IGNORED_FLAGS:
        if getattr(args, flag.lstrip("-").replace("-", "_"), None) is not None:
            log.warning("%s is accepted for seldon-core-microservice compatibility and ignored", flag)
    started = time.perf_counter()
    threads = 1 if args.single_threaded else max(1, args.threads)
    try:
        parameters = parse_parameters(args.parameters)
        component = SeldonComponent.create(args.interface_name, parameters, args.service_type, threads)
        model_name = args.model_name or component.name.lower()
        check_model_name(model_name)
    except InferError as exc:
        log.error("%s", exc.message)
        return 1
    except Exception as exc:  # the user's module failed to import or its constructor raised
        log.exception("cannot create the Seldon class '%s': %s", args.interface_name, exc)
        return 1
    log.info("serving %s (%s) as V2 model '%s'", args.interface_name, args.service_type, model_name)
    try:
        component.load()
    except Exception as exc:
        log.exception("the class's load() failed: %s", exc)
        component.close()
        return 1
    component.custom_metrics.labels["model_name"] = os.environ.get("PREDICTIVE_UNIT_ID") or model_name
    try:
        from .cli import gateway_from_args

        gateway = gateway_from_args(args)
    except ValueError as exc:
        log.error("%s", exc)
        component.close()
        return 1
    register_component(model_name, component)
    repository = _write_repository(model_name, threads)
    try:
        server = Server(repository, server_name="inferd", gateway=gateway)
        try:
            from .pipeline.plugins import add_pipeline_stages

            if not add_pipeline_stages(server, args.pipeline_stage):
                return 1
            row = next((r for r in server.repository_index() if r.get("name") == model_name), {})
            if row.get("state") != "READY":
                log.error("the V2 model '%s' did not load: %s", model_name, row.get("reason", "unknown reason"))
                return 1
            from .frontends.runner import run_event_loop

            run_event_loop(_serve(server, component, model_name, args, started))
        finally:
            server.close()
    finally:
        unregister_component(model_name)
        component.close()
        shutil.rmtree(repository, ignore_errors=True)
    return 0


async def _serve(server: Any, component: Any, model_name: str, args: argparse.Namespace, started: float) -> None:
    from .frontends.http import HttpFrontend
    from .frontends.http.routes import MICROSERVICE_ROUTES
    from .frontends.runner import Endpoint, serve_until_signal

    frontend = HttpFrontend(server, max_input_size=args.http_max_input_size, routes=MICROSERVICE_ROUTES,
                            default_model=model_name)
    await serve_until_signal(
        server, http=(frontend, Endpoint(args.http_address, args.http_port)),
        grpc=Endpoint(args.grpc_address, args.grpc_port) if args.grpc_port else None,
        metrics=Endpoint(args.metrics_address or args.http_address, args.metrics_port) if args.metrics_port else None,
        exit_timeout=args.exit_timeout_secs, http_name="Seldon + V2 HTTPService",
        metrics_collectors=[component.custom_metrics, *server.metrics_collectors],
        ready_message=f"inferd {__version__} microservice ready", started=started)
