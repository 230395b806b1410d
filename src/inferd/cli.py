"""`inferd serve` with Triton's flag names, so Triton command lines work as they are."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._version import __version__
from .backends.settings import BackendSettings
from .caching import CacheOptions
from .frontends.http.routes import API_GROUPS
from .limits import DEFAULT_MAX_INPUTS, DEFAULT_MAX_TENSOR_ELEMENTS
from .memory import DEFAULT_MAX_SHM_REGIONS
from .observability import LOG_CONTROL, Tracer
from .observability.payload_log import DEFAULT_QUEUE_SIZE as PAYLOAD_QUEUE_SIZE
from .observability.payload_log import PayloadLogger
from .observability.tracing import parse_trace_config
from .pipeline.plugins import add_pipeline_stage_argument, add_pipeline_stages
from .scaling import parse_memory_limit
from .server import Server

if TYPE_CHECKING:
    from .frontends.http.app import HttpFrontend
    from .frontends.runner import Endpoint
    from .gateway.gate import Gateway

log = logging.getLogger("inferd")

# Triton flags that tune parts inferd does not have (CUDA pools, its thread pools): accepted and ignored,
# so a Triton command line still starts the server.
_IGNORED_TRITON_FLAGS = (
    "--backend-directory", "--repoagent-directory", "--cache-directory",
    "--http-thread-count", "--grpc-infer-allocation-pool-size", "--pinned-memory-pool-byte-size",
    "--cuda-memory-pool-byte-size", "--min-supported-compute-capability", "--id",
    "--rate-limit", "--rate-limit-resource", "--buffer-manager-thread-count", "--model-load-thread-count",
    "--host-policy", "--grpc-keepalive-time", "--grpc-keepalive-timeout",
)


def parse_bool(text: str) -> bool:
    """Triton's boolean flag values."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """`--flag`, `--flag=true|false` and `--flag true|false` all work, as in Triton."""
    parser.add_argument(name, type=parse_bool, nargs="?", const=True, default=default, metavar="BOOL",
                        help=f"{help} (default {str(default).lower()})")


def build_parser(serve_only: bool = False) -> argparse.ArgumentParser:
    """The command line's parser; `serve_only`: without the other subcommands, whose parsers import their modules
    (the deploy manifests and YAML, the tools, the clients), which a server does not need."""
    parser = argparse.ArgumentParser(prog="inferd", description="inferd: a Triton-compatible inference server")
    parser.add_argument("--version", action="version", version=f"inferd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository over HTTP and gRPC")
    add_serve_arguments(serve)
    serve.set_defaults(func=serve_command)
    if serve_only:
        return parser
    add_deploy_parsers(commands)
    from .client import add_bench_parser

    add_bench_parser(commands)
    from .microservice import add_microservice_parser

    add_microservice_parser(commands)
    from .gateway.admin_cli import add_tenants_parser, add_usage_parser

    add_tenants_parser(commands)
    add_usage_parser(commands)
    add_convert_parser(commands)
    add_quantize_parser(commands)
    add_analyze_parser(commands)
    from .repo_tools import add_repo_parser

    add_repo_parser(commands)
    from .client.infer import add_infer_parser

    add_infer_parser(commands)
    return parser


def add_convert_parser(commands: argparse._SubParsersAction) -> None:
    from .tools.convert import DEFAULT_MAX_BATCH_SIZE, DEFAULT_TOLERANCE

    convert = commands.add_parser(
        "convert", help="convert a PyTorch, TensorFlow, scikit-learn, XGBoost or LightGBM model to ONNX",
        description="Convert a trained model to ONNX as a repository folder (REPO/NAME/1/model.onnx and "
        "REPO/NAME/config.pbtxt) and print the largest output difference between the original and ONNX Runtime. "
        "Exit status: 0 within --tolerance, 1 over it, 2 when it cannot convert.")
    convert.add_argument("model_path", type=Path, metavar="MODEL_PATH",
                         help="a TorchScript .pt or torch.export .pt2 file, a SavedModel folder, a scikit-learn "
                         ".joblib / .pkl, an XGBoost .json / .ubj or a LightGBM .txt")
    convert.add_argument("--output", type=Path, required=True, metavar="REPO", help="the model repository to write to")
    convert.add_argument("--name", required=True, help="the model's name (its folder in REPO)")
    convert.add_argument("--sample-input", type=Path, default=None, metavar="FILE.npy|.npz",
                         help="inputs to compare on: .npy for one input, .npz with one array per input (by name, "
                         "else in order); needed for TorchScript (default: the example a .pt2 keeps, else "
                         "random rows shaped from the model)")
    convert.add_argument("--opset", type=int, default=None, metavar="N",
                         help="ONNX opset (default: the converter's: 17; 18 for .pt2; 15 for XGBoost / LightGBM)")
    convert.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, metavar="N",
                         help="config's max_batch_size; above 0 the first dimension is the batch and stays free "
                         f"(default {DEFAULT_MAX_BATCH_SIZE}; 0: shapes as the model has them)")
    convert.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="X",
                         help=f"largest absolute output difference accepted (default {DEFAULT_TOLERANCE:g})")
    convert.set_defaults(func=convert_command)


def convert_command(args: argparse.Namespace) -> int:
    from .tools.convert import ConvertOptions, run_convert

    return run_convert(ConvertOptions(args.model_path, args.output, args.name, args.sample_input, args.opset,
                                      args.max_batch_size, args.tolerance))


def add_quantize_parser(commands: argparse._SubParsersAction) -> None:
    from .tools.quantize import DEFAULT_RUNS, MODES

    quantize = commands.add_parser(
        "quantize", help="quantize an ONNX model to INT8 or FP16, as a new version",
        description="Quantize an ONNX model of a repository with ONNX Runtime (dynamic or static INT8) or convert "
        "it to FP16, written as a new version of the same model; prints the speed-up and the output deviation "
        "against the source version on the same inputs. Exit status: 0 done, 2 when it cannot.")
    quantize.add_argument("model_dir", type=Path, metavar="REPO/NAME", help="the model's folder in a repository")
    quantize.add_argument("--mode", choices=MODES, default="dynamic",
                          help="dynamic: INT8 weights, activations quantized at run time; static: INT8 weights and "
                          "activations, scales from --calibration; fp16: FP16 weights and compute, FP32 inputs and "
                          "outputs kept (default dynamic)")
    quantize.add_argument("--calibration", type=Path, default=None, metavar="FILE.npz|DIR",
                          help="inputs for static calibration and for the comparison: an .npz / .npy file or a "
                          "folder of them (default: random rows shaped from the config)")
    quantize.add_argument("--from-version", type=int, default=None, metavar="N",
                          help="the source version (default: the highest)")
    quantize.add_argument("--to-version", type=int, default=None, metavar="M",
                          help="the version to write (default: the next number)")
    quantize.add_argument("--runs", type=int, default=DEFAULT_RUNS, metavar="N",
                          help=f"timed runs of each model for the speed-up, median taken (default {DEFAULT_RUNS})")
    quantize.set_defaults(func=quantize_command)


def quantize_command(args: argparse.Namespace) -> int:
    from .tools.quantize import QuantizeOptions, run_quantize

    return run_quantize(QuantizeOptions(args.model_dir, args.mode, args.calibration, args.from_version,
                                        args.to_version, args.runs))


def add_analyze_parser(commands: argparse._SubParsersAction) -> None:
    from .tools.analyze import DEFAULT_MAX_INSTANCES, DEFAULT_PROBE_S

    analyze = commands.add_parser(
        "analyze", help="search the config that serves a model fastest under a latency budget",
        description="Sweep instance count, max batch size, preferred batch sizes and queue delay of one model on a "
        "server in explicit model control mode (each candidate loaded through the repository API, measured with "
        "the `inferd bench` load generator), print the Pareto table (throughput against p99 latency) and write "
        "the best config. The model is left loaded with its best config. Exit status: 0 done, 1 when no "
        "candidate met the budget, 2 when it cannot run.")
    analyze.add_argument("-m", "--model-name", required=True, help="the model to analyze")
    analyze.add_argument("-u", "--url", default=None,
                         help="server as host:port (default localhost:8000 for HTTP, localhost:8001 for gRPC)")
    analyze.add_argument("-i", "--protocol", type=str.lower, choices=["http", "grpc"], default="http",
                         help="protocol of the load and of the repository calls (default http)")
    analyze.add_argument("--latency-budget-ms", type=float, default=None, metavar="X",
                         help="p99 latency a config may not exceed (default: none)")
    analyze.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES, metavar="N",
                         help=f"most instances of the model tried (default {DEFAULT_MAX_INSTANCES})")
    analyze.add_argument("--max-memory-mb", type=float, default=None, metavar="MB",
                         help="a config whose server RSS exceeds this is out (read from /proc when the server runs "
                         "on this host; default: no limit)")
    analyze.add_argument("--probe-seconds", type=float, default=DEFAULT_PROBE_S, metavar="S",
                         help=f"length of one measurement (default {DEFAULT_PROBE_S:g}); the best few are measured "
                         "again for three times as long")
    analyze.add_argument("--search", choices=["quick", "brute"], default="quick",
                         help="quick: coordinate descent from the model's own config, then the best few confirmed; "
                         "brute: every point of the grid (default quick)")
    analyze.add_argument("--output", type=Path, default=None, metavar="FILE",
                         help="write the best config here, in config.pbtxt form (default: print it only)")
    analyze.add_argument("--plot", type=Path, default=None, metavar="FILE.png|.svg",
                         help="plot the sweep (throughput against p99) to this file (default: none)")
    analyze.set_defaults(func=analyze_command)


def analyze_command(args: argparse.Namespace) -> int:
    from .tools.analyze import options_from_args, run_analyze

    return run_analyze(options_from_args(args))


def add_deploy_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`inferd deploy kserve|knative|kubernetes` (manifests on stdout) and `inferd entrypoint` (the image's)."""
    from .deploy import DEFAULT_IMAGE, KSERVE_MODEL_DIR, TARGETS

    deploy = commands.add_parser(
        "deploy", help="print Kubernetes, KServe or Knative manifests that serve a repository",
        description="Print the manifests (YAML, for `kubectl apply -f -`) that serve a repository with the inferd "
        "image: kubernetes: Deployment, Service, HorizontalPodAutoscaler on pending requests, PodDisruptionBudget; "
        "knative: a Service that scales to zero; kserve: the inferd ClusterServingRuntime and an InferenceService. "
        "A local folder is shipped as a ConfigMap (small repositories only); a URI is fetched in the cluster.")
    deploy.add_argument("target", choices=sorted(TARGETS), help="what to print manifests for")
    deploy.add_argument("--repository", required=True, metavar="PATH|URI",
                        help="the model repository: a folder, or s3:// gs:// az:// https:// pvc:// (required)")
    deploy.add_argument("--image", default=DEFAULT_IMAGE,
                        help=f"the inferd image, built from deploy/Dockerfile (default {DEFAULT_IMAGE})")
    deploy.add_argument("--name", default=None, metavar="N",
                        help="name of the resources (default: the repository's last path segment)")
    deploy.set_defaults(func=deploy_command)
    entrypoint = commands.add_parser(
        "entrypoint", help="the container image's entrypoint: serve KServe's /mnt/models or $STORAGE_URI",
        description="Serve what KServe's storage initializer put in the model folder (a repository, or one model's "
        "folder served under --model-name), else the repository $STORAGE_URI names; $PORT is where $PROTOCOL is "
        "served (v1 and v2: HTTP, grpc-v2: gRPC). Other flags go to `inferd serve` and win over the environment.",
        allow_abbrev=False)
    entrypoint.add_argument("--model-dir", type=Path, default=Path(KSERVE_MODEL_DIR), metavar="PATH",
                            help=f"where the storage initializer puts the model (default {KSERVE_MODEL_DIR})")
    entrypoint.add_argument("--model-name", default=None, metavar="NAME",
                            help="the name a single model's folder is served under (default: $MODEL_NAME, else the "
                            "last segment of $STORAGE_URI, else 'model')")
    entrypoint.set_defaults(func=entrypoint_command, forward_unknown=True)


def deploy_command(args: argparse.Namespace) -> int:
    from .deploy import TARGETS, DeployOptions, to_yaml

    try:
        manifests = TARGETS[args.target](DeployOptions(args.repository, args.image, args.name))
    except ValueError as error:
        print(f"inferd deploy: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(to_yaml(manifests))
    return 0


def entrypoint_command(args: argparse.Namespace) -> int:
    from .deploy import run_entrypoint

    return run_entrypoint(args.model_dir, args.model_name, args.serve_args)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--model-repository", "--model-store", action="append", dest="model_repository",
                       required=True, metavar="PATH",
                       help="model repository: a folder, or s3:// gs:// az:// https:// file:// pvc:// (repeatable; "
                       "required, no default)")
    serve.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                       help="none: serve what the repository holds at start-up; poll: apply changes found every "
                       "--repository-poll-secs; explicit: load and unload through the repository API (default none)")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="with --model-control-mode=explicit: load this model at start-up ('*' for all; "
                       "repeatable; default: none)")
    serve.add_argument("--deployment", action="append", default=[], metavar="FILE",
                       help="a SeldonDeployment or KServe InferenceGraph file (YAML or JSON) whose graphs are served "
                       "as models, after the models load (repeatable; a repository's deployments/ folder is read "
                       "as well; default: none)")
    serve.add_argument("--repository-poll-secs", type=float, default=15.0, metavar="SECONDS",
                       help="with --model-control-mode=poll: seconds between repository scans (default 15)")
    _add_scaling_arguments(serve)
    any_port = "; 0: a free port the system picks, logged as 'started ... at ADDRESS:PORT'"
    serve.add_argument("--http-port", type=int, default=8000, help=f"HTTP/REST port (default 8000{any_port})")
    serve.add_argument("--grpc-port", type=int, default=8001, help=f"gRPC port (default 8001{any_port})")
    serve.add_argument("--metrics-port", type=int, default=8002, help=f"/metrics port (default 8002{any_port})")
    serve.add_argument("--http-address", default="0.0.0.0", metavar="ADDRESS",
                       help="listen address of HTTP/REST (default 0.0.0.0: every interface)")
    serve.add_argument("--grpc-address", default="0.0.0.0", metavar="ADDRESS",
                       help="listen address of gRPC (default 0.0.0.0: every interface)")
    serve.add_argument("--metrics-address", default=None, metavar="ADDRESS",
                       help="listen address of /metrics (default: --http-address)")
    serve.add_argument("--torchserve-management-port", type=int, default=None, metavar="PORT",
                       help="serve TorchServe's management API (POST/PUT/DELETE/GET /models: register, scale, "
                       "unregister, describe) on this port; TorchServe's own is 8081; registering needs "
                       f"--model-control-mode=explicit (default: off{any_port})")
    serve.add_argument("--torchserve-management-address", default="127.0.0.1", metavar="ADDRESS",
                       help="listen address of TorchServe's management API (default 127.0.0.1: this host only, as "
                       "TorchServe)")
    _bool_flag(serve, "--allow-http", True, "serve the HTTP/REST protocol")
    _bool_flag(serve, "--allow-grpc", True, "serve the gRPC protocol")
    _bool_flag(serve, "--allow-metrics", True, "serve Prometheus metrics")
    _bool_flag(serve, "--strict-readiness", True, "ready only when every model is ready")
    _bool_flag(serve, "--exit-on-error", False, "exit when a model fails to load")
    _bool_flag(serve, "--strict-model-config", False, "require complete config.pbtxt files (no auto-complete)")
    serve.add_argument("--backend-config", action="append", default=[], metavar="[BACKEND,]SETTING=VALUE",
                       help="Triton's backend settings (repeatable); inferd uses default-max-batch-size=N: the "
                       "max_batch_size auto-complete gives config-less models that can batch (default 4; 0: none), "
                       "for every backend or one (onnxruntime,default-max-batch-size=N); others are ignored")
    serve.add_argument("--cache-config", action="append", default=[], metavar="local,size=BYTES",
                       help="Triton's response cache (repeatable, one setting each): answers of models with "
                       "response_cache { enable: true } kept in an LRU of BYTES bytes (default: no cache)")
    serve.add_argument("--disable-auto-complete-config", action="store_true",
                       help="do not complete configs from the model files (default: complete them, as Triton)")
    serve.add_argument("--exit-timeout-secs", type=float, default=30.0, metavar="SECONDS",
                       help="on shutdown, how long in-flight requests may take to finish; then instance processes "
                       "are terminated (default 30)")
    serve.add_argument("--drain-delay-secs", type=float, default=None, metavar="S",
                       help="on shutdown, keep accepting for S seconds while reporting not ready, so load balancers "
                       "move traffic away first (counts within --exit-timeout-secs; default $INFERD_DRAIN_DELAY_SECS, "
                       "else 0)")
    serve.add_argument("--http-max-input-size", type=int, default=64 * 1024 * 1024, metavar="BYTES",
                       help="largest HTTP request body in bytes; larger ones get 413 (default 67108864: 64 MiB)")
    serve.add_argument("--http-header-timeout-secs", type=float, default=30.0, metavar="SECONDS",
                       help="a request's headers must arrive within this (from its first byte), else 408 and close "
                       "(default 30)")
    serve.add_argument("--http-body-timeout-secs", type=float, default=60.0, metavar="SECONDS",
                       help="a request's body must arrive within this (from the end of its headers), else 408 and "
                       "close (default 60)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="front-end processes: with 2 or more, N worker processes accept on --http-port and "
                       "--grpc-port (SO_REUSEPORT), parse, decode and encode, while the models, the pipeline, "
                       "statistics and metrics stay in this process, tensors crossing through shared memory (default "
                       "1: this process serves HTTP and gRPC itself)")
    serve.add_argument("--http-max-connections", type=int, default=0, metavar="N",
                       help="HTTP connections open at once; past it the oldest with no request in progress is "
                       "closed, else the new one gets 503 (default 0: 10,000, or half the open-files limit if lower)")
    _add_tls_arguments(serve)
    add_auth_arguments(serve)
    serve.add_argument("--grpc-max-message-size", type=int, default=2**31 - 1, metavar="BYTES",
                       help="largest gRPC message in bytes (default 2147483647: 2 GiB - 1, as Triton; gRPC's own "
                       "4 MB is too small for tensors)")
    serve.add_argument("--max-tensor-elements", type=int, default=DEFAULT_MAX_TENSOR_ELEMENTS, metavar="N",
                       help="most elements one input tensor may declare; larger requests get INVALID_ARGUMENT "
                       f"before their data is read (default {DEFAULT_MAX_TENSOR_ELEMENTS})")
    serve.add_argument("--max-inputs", type=int, default=DEFAULT_MAX_INPUTS, metavar="N",
                       help=f"most inputs one request may name (default {DEFAULT_MAX_INPUTS})")
    _bool_flag(serve, "--allow-client-shm", False, "let clients register system shared memory regions and place "
               "inputs and outputs in them (off by default, as Triton 26.04+: the server then maps and writes any "
               "segment a client names, as its own user; clients must be on this host)")
    serve.add_argument("--max-shm-regions", type=int, default=DEFAULT_MAX_SHM_REGIONS, metavar="N",
                       help=f"most client shared-memory regions registered at once; each holds a file descriptor "
                       f"(default {DEFAULT_MAX_SHM_REGIONS}; past it, 429 / RESOURCE_EXHAUSTED)")
    _bool_flag(serve, "--allow-code-upload", False, "let model load requests carry code in their file: overrides "
               "(Python models, pickles, TorchServe archives, MLflow models): such a load runs what the client sent "
               "with the server's rights")
    serve.add_argument("--http-restricted-api", action="append", default=[], metavar="API[,API...]:KEY=VALUE",
                       help="HTTP requests of these API groups need the header KEY with VALUE (else 403), as in "
                       f"Triton; groups: {', '.join(API_GROUPS)} (repeatable, one group per flag at most; "
                       "default: every group open)")
    serve.add_argument("--grpc-restricted-protocol", action="append", default=[],
                       metavar="PROTOCOL[,PROTOCOL...]:KEY=VALUE",
                       help="gRPC calls of these groups need the metadata triton-grpc-protocol-KEY with VALUE (else "
                       "UNAVAILABLE), as in Triton; the groups of --http-restricted-api (default: every group open)")
    serve.add_argument("--server-name", default="inferd",
                       help="name in server metadata ('triton' for scripts that check it; default inferd)")
    serve.add_argument("--log-verbose", type=int, default=0, metavar="LEVEL",
                       help="above 0, debug lines too: one per request with its queue and compute times (default 0)")
    _bool_flag(serve, "--log-info", True, "log informational messages")
    _bool_flag(serve, "--log-warning", True, "log warnings")
    _bool_flag(serve, "--log-error", True, "log errors")
    serve.add_argument("--log-file", default="", metavar="PATH", help="write the log to this file (default: stderr)")
    serve.add_argument("--log-format", choices=["default", "ISO8601", "json"], default="default",
                       help="log lines in Triton's default form, with ISO8601 timestamps, or as JSON objects (json "
                       "also writes an access line per request: model, version, protocol, status, latency, batch "
                       "size, tenant) (default: default)")
    serve.add_argument("--model-env-dir", default=None, metavar="PATH",
                       help="cache folder of the Python environments built from models' requirements.txt "
                       "(default: $INFERD_CACHE_DIR/envs, else ~/.cache/inferd/envs)")
    serve.add_argument("--trace-config", action="append", default=[], metavar="[MODE,]SETTING=VALUE",
                       help="Triton's trace settings: level=OFF|TIMESTAMPS|TENSORS, rate=N, count=N, "
                       "mode=triton|opentelemetry; mode triton's file=PATH, log-frequency=N (optionally prefixed "
                       "'triton,', e.g. triton,file=trace.json); mode opentelemetry's opentelemetry,url=HOST:PORT/"
                       "v1/traces, opentelemetry,resource=KEY=VALUE, opentelemetry,bsp_schedule_delay=MS, "
                       "opentelemetry,exporter=otlp|console|file (needs pip install 'inferd[otel]'; OTEL_* "
                       "variables apply) (repeatable; default: tracing off, mode triton)")
    serve.add_argument("--payload-log", default="", metavar="URL|file:PATH",
                       help="log each request and its response as CloudEvents, as KServe's logger: posted to an "
                       "HTTP sink at URL (binary mode, ce-* headers) or appended to PATH as JSON lines; a model's "
                       "payload_log parameter (request|response|all|none) picks what (default: off; all once on)")
    serve.add_argument("--payload-log-queue", type=int, default=PAYLOAD_QUEUE_SIZE, metavar="N",
                       help="requests the payload log holds while its sink is slow or down; beyond it they are "
                       f"dropped and counted in inferd_payload_log_dropped_total (default {PAYLOAD_QUEUE_SIZE})")
    add_pipeline_stage_argument(serve)
    serve.add_argument("--host-routing", default=None, metavar="PATTERN",
                       help="route by host: a request whose Host (gRPC: :authority) matches PATTERN, such as "
                       "'{model}.models.example.com', is for the model it names, on every path (POST /v2/infer, "
                       "/api/v1.0/predictions, and the ordinary paths, which must then name the same model); a "
                       "matching host that names no model is 404, other hosts route as usual (default: off)")
    for flag in _IGNORED_TRITON_FLAGS:
        serve.add_argument(flag, action="append", default=None, help=argparse.SUPPRESS)


def _add_scaling_arguments(serve: argparse.ArgumentParser) -> None:
    """Scale to zero, held requests and the memory limit (scaling/); a model's own parameters win."""
    serve.add_argument("--model-idle-unload-secs", type=float, default=0.0, metavar="SECONDS",
                       help="scale a model to zero after this many seconds without a request: its instances are "
                       "unloaded, it stays listed READY ('scaled to zero') and its next request is held while it "
                       "loads; a model's idle_unload_seconds parameter overrides it (default 0: never)")
    serve.add_argument("--model-load-timeout-secs", type=float, default=300.0, metavar="SECONDS",
                       help="how long a request held for a model loading from zero waits before it fails, saying "
                       "the load timed out (default 300)")
    serve.add_argument("--model-held-requests", type=int, default=10000, metavar="N",
                       help="requests held per model while it loads from zero; past it, 503 with Retry-After "
                       "(default 10000, as Knative's activator)")
    serve.add_argument("--model-memory-limit", default="0", metavar="BYTES|N%",
                       help="the models' measured resident memory stays under this (bytes, K/M/G/Ki/Mi/Gi, or a "
                       "share of the machine's memory): least recently used idle models are evicted (scaled to "
                       "zero) to load another; a model with the parameter pinned=true never is (default 0: no "
                       "limit)")


def _add_tls_arguments(serve: argparse.ArgumentParser) -> None:
    """HTTPS (uvicorn's flag names) and gRPC TLS (Triton's); /metrics stays plain HTTP, as in Triton."""
    serve.add_argument("--ssl-certfile", default=None, metavar="PATH",
                       help="serve HTTPS only on --http-port with this PEM certificate (chain); needs --ssl-keyfile "
                       "(/metrics stays plain HTTP; default: plain HTTP)")
    serve.add_argument("--ssl-keyfile", default=None, metavar="PATH",
                       help="the PEM private key of --ssl-certfile (default: none)")
    serve.add_argument("--ssl-ca-certs", default=None, metavar="PATH",
                       help="PEM CA certificates: HTTPS clients must present a certificate signed by them (default: "
                       "none, no client certificate asked)")
    _bool_flag(serve, "--grpc-use-ssl", False, "serve gRPC over TLS with --grpc-server-cert and --grpc-server-key")
    _bool_flag(serve, "--grpc-use-ssl-mutual", False, "serve gRPC over TLS and require client certificates signed "
               "by --grpc-root-cert (implies --grpc-use-ssl)")
    serve.add_argument("--grpc-server-cert", default=None, metavar="PATH",
                       help="PEM certificate (chain) of gRPC TLS (default: none)")
    serve.add_argument("--grpc-server-key", default=None, metavar="PATH",
                       help="PEM private key of gRPC TLS (default: none)")
    serve.add_argument("--grpc-root-cert", default=None, metavar="PATH",
                       help="PEM CA certificates that sign gRPC client certificates (--grpc-use-ssl-mutual; "
                       "default: none)")


def add_auth_arguments(serve: argparse.ArgumentParser) -> None:  # `inferd serve` and `inferd microservice`
    """Tenants, API keys and the audit trail (off without --auth-config: every caller is let in, as Triton)."""
    serve.add_argument("--auth-config", default=None, metavar="FILE",
                       help="turn authentication on: admin keys, open paths and tenants (keys, models, limits) in "
                       "this YAML or JSON file, re-read when it changes and on SIGHUP (see `inferd tenants`; "
                       "default: none, every caller is let in)")
    serve.add_argument("--audit-db", default=None, metavar="URL",
                       help="where the audit trail (one record per call) goes: sqlite:///PATH or postgresql://... "
                       "(default with --auth-config: sqlite:///<--state-dir>/audit.db)")
    serve.add_argument("--state-dir", default=None, metavar="PATH",
                       help="where the server keeps its state (default $XDG_STATE_HOME/inferd, else "
                       "~/.local/state/inferd)")
    serve.add_argument("--audit-retention-days", type=float, default=None, metavar="DAYS",
                       help="delete audit records older than this (default: keep them)")


def gateway_from_args(args: argparse.Namespace) -> Gateway | None:
    """The gateway the auth flags ask for (None without --auth-config and --audit-db); ValueError, one line, when
    the file or the database is wrong."""
    if args.auth_config is None and args.audit_db is None:
        return None
    from .gateway.audit import AuditLog  # SQLAlchemy: only with an audit trail
    from .gateway.gate import Gateway

    url = args.audit_db or f"sqlite:///{state_dir(args.state_dir) / 'audit.db'}"
    if args.auth_config is None:
        raise ValueError("--audit-db needs --auth-config (the audit trail records who called)")
    audit = AuditLog(url, retention_days=args.audit_retention_days)
    try:
        gateway = Gateway(args.auth_config, audit=audit)
    except ValueError:
        audit.close()
        raise
    gateway.seed_quotas()
    gateway.watch()
    log.info("authentication on: %d tenant(s) from %s; audit trail in %s", len(gateway.config.tenants),
             args.auth_config, url.split("@")[-1])
    return gateway


def state_dir(given: str | None) -> Path:
    """--state-dir, else $XDG_STATE_HOME/inferd, else ~/.local/state/inferd."""
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "inferd"


def parse_restrictions(values: Sequence[str], what: str = "api") -> dict[str, tuple[str, str]]:
    """Triton's `--http-restricted-api` / `--grpc-restricted-protocol` values (`API[,API]:KEY=VALUE`, each
    repeatable) as group -> (KEY, VALUE); raises ValueError with Triton's messages."""
    restricted: dict[str, tuple[str, str]] = {}
    for value in values:
        groups, colon, setting = value.partition(":")
        key, equals, expected = setting.partition("=")
        if not colon or not equals or not groups or not key.strip():
            form = what.upper()
            raise ValueError(f"restricted {what} '{value}' is not of the form {form}[,{form}]:KEY=VALUE")
        for group in (g.strip() for g in groups.split(",")):
            if group not in API_GROUPS:
                raise ValueError(f"unknown restricted {what} '{group}' (known: {', '.join(API_GROUPS)})")
            if group in restricted:
                raise ValueError(f"{what} '{group}' can not be specified in multiple config groups")
            restricted[group] = (key.strip().lower(), expected)
    return restricted


def status_table(rows: list[dict[str, str]]) -> str:
    """The start-up table Triton prints: Model | Version | Status."""
    body = []
    for row in rows:
        state = row.get("state", "UNAVAILABLE")
        status = state if state == "READY" or not row.get("reason") else f"{state}: {row['reason']}"
        body.append((row["name"], row.get("version", "-"), status))
    header = ("Model", "Version", "Status")
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(3)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule, "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |", rule]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body]
    lines.append(rule)
    return "\n".join(lines)


def _payload_logger(args: argparse.Namespace) -> PayloadLogger | None:
    """`--payload-log`: the payload log's queue and writer (None when off)."""
    if not args.payload_log:
        return None
    source = f"http://{socket.gethostname()}:{args.http_port}/"  # as KServe's logger: the server's own URL
    return PayloadLogger(args.payload_log, source=source, queue_size=args.payload_log_queue)


def serve_command(args: argparse.Namespace) -> int:
    try:
        LOG_CONTROL.install(verbose=args.log_verbose, info=args.log_info, warning=args.log_warning,
                            error=args.log_error, file=args.log_file, format=args.log_format)
    except OSError as exc:
        print(f"inferd: cannot open the log file: {exc}", file=sys.stderr)
        return 1
    try:
        tracer = Tracer(parse_trace_config(args.trace_config))
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    for flag in _IGNORED_TRITON_FLAGS:
        if getattr(args, flag.lstrip("-").replace("-", "_"), None):
            log.warning("%s is accepted for Triton compatibility and ignored", flag)
    try:
        args.http_restricted = parse_restrictions(args.http_restricted_api, "api")
        args.grpc_restricted = parse_restrictions(args.grpc_restricted_protocol, "protocol")
        _tls_settings(args)
        args.backend_settings = BackendSettings.parse(args.backend_config)
        args.cache = CacheOptions.parse(args.cache_config)
        args.memory_limit = parse_memory_limit(args.model_memory_limit)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if args.workers < 1:
        log.error("--workers must be at least 1 (got %d)", args.workers)
        return 1
    for setting in args.backend_settings.unused():
        log.warning("--backend-config %s is accepted for Triton compatibility and ignored", setting)
    if not _ports_free(args):
        return 1
    started = time.perf_counter()
    try:
        gateway = gateway_from_args(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    try:
        payload_log = _payload_logger(args)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        if gateway is not None:
            gateway.close()
        return 1
    _import_doors_meanwhile(args)
    try:
        server = Server(
            args.model_repository,
            model_control_mode=args.model_control_mode,
            load_models=args.load_model,
            strict_readiness=args.strict_readiness,
            repository_poll_secs=args.repository_poll_secs,
            autocomplete=not (args.disable_auto_complete_config or args.strict_model_config),
            server_name=args.server_name,
            tracer=tracer,
            allow_client_shm=args.allow_client_shm,
            max_shm_regions=args.max_shm_regions,
            max_tensor_elements=args.max_tensor_elements,
            max_inputs=args.max_inputs,
            model_env_dir=args.model_env_dir or None,
            allow_code_upload=args.allow_code_upload,
            gateway=gateway,
            deployments=args.deployment,
            idle_unload_secs=args.model_idle_unload_secs,
            model_load_timeout_secs=args.model_load_timeout_secs,
            model_held_requests=args.model_held_requests,
            model_memory_limit=args.memory_limit,
            host_routing=args.host_routing,
            backend_settings=args.backend_settings,
            response_cache_size=args.cache.size if args.cache is not None else 0,
            payload_log=payload_log,
            access_log=args.log_format == "json",
        )
    except (OSError, ValueError, ImportError) as exc:  # a missing or unreachable repository
        log.error("%s", exc)
        if gateway is not None:
            gateway.close()
        if payload_log is not None:
            payload_log.close(timeout=0)
        return 1
    if not add_pipeline_stages(server, args.pipeline_stage):
        server.close()
        return 1
    rows = server.repository_index()
    print(status_table(rows), flush=True)
    if args.exit_on_error and any(r.get("state") != "READY" for r in rows):
        log.error("exiting: a model failed to load and --exit-on-error is set")
        server.close()
        return 1
    # What start-up made (modules, configurations, the models' Python side) leaves the garbage collector's
    # generations: its collections then look only at what requests allocate (about 1 % of an mlp request's CPU).
    gc.freeze()
    try:
        from .frontends.runner import run_event_loop

        run_event_loop(_serve(server, args, started))
    finally:
        server.close()
    return 0


def _import_doors_meanwhile(args: argparse.Namespace) -> None:
    """Import the event loop's and the gRPC door's modules on a thread while the models load (their runtimes load
    with the GIL released) rather than after: the doors open sooner. They are imported again where they are used,
    as ever: a no-op by then, or the import's error raised there."""
    names = ["inferd.frontends.runner", *(["inferd.frontends.grpc"] if args.allow_grpc else [])]

    def run() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # reported where the module is used
                return

    threading.Thread(target=run, name="inferd-imports", daemon=True).start()


def _ports_free(args: argparse.Namespace) -> bool:
    """The doors' ports bind (checked before any model loads, which can take minutes); else one line, False."""
    from .frontends.runner import Endpoint, ListenError, check_ports

    try:
        check_ports({
            "http": Endpoint(args.http_address, args.http_port) if args.allow_http else None,
            "grpc": Endpoint(args.grpc_address, args.grpc_port) if args.allow_grpc else None,
            "metrics": Endpoint(args.metrics_address or args.http_address, args.metrics_port)
            if args.allow_metrics else None,
            "torchserve-management": _management_endpoint(args)})
    except ListenError as exc:
        log.error("%s", exc)
        return False
    return True


def _management_endpoint(args: argparse.Namespace) -> Endpoint | None:
    from .frontends.runner import Endpoint

    port = args.torchserve_management_port
    return None if port is None else Endpoint(args.torchserve_management_address, port)


def _management_door(server: Server, args: argparse.Namespace) -> tuple[HttpFrontend, Endpoint] | None:
    """TorchServe's management API, when --torchserve-management-port asks for it (restricted as the repository
    API is: --http-restricted-api model-repository:..., admin keys)."""
    from .frontends.http.torchserve_management import TorchServeManagement

    endpoint = _management_endpoint(args)
    if endpoint is None:
        return None
    if server.model_control_mode != "explicit":
        log.warning("TorchServe's management API lists and describes models; registering, scaling and "
                    "unregistering them needs --model-control-mode=explicit")
    frontend = TorchServeManagement(server, args.model_repository, restricted=args.http_restricted,
                                    max_input_size=args.http_max_input_size)
    return frontend, endpoint


def _tls_settings(args: argparse.Namespace) -> None:
    """`args.http_tls` / `args.grpc_tls` from the TLS flags, their files loaded before any model is (ValueError:
    one line naming the flag), so a bad file stops the server before it loads models for minutes."""
    from .frontends.tls import grpc_tls, http_tls

    args.http_tls = http_tls(args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs)
    args.grpc_tls = grpc_tls(args.grpc_use_ssl, args.grpc_use_ssl_mutual, args.grpc_server_cert,
                             args.grpc_server_key, args.grpc_root_cert)


async def _serve(server: Server, args: argparse.Namespace, started: float) -> None:
    from .frontends.http import HttpFrontend
    from .frontends.http.server import HttpLimits
    from .frontends.runner import Endpoint, serve_until_signal

    limits = HttpLimits(header_timeout=args.http_header_timeout_secs, body_timeout=args.http_body_timeout_secs,
                        max_connections=args.http_max_connections)
    frontend = HttpFrontend(server, max_input_size=args.http_max_input_size, restricted=args.http_restricted)
    http = (frontend, Endpoint(args.http_address, args.http_port))
    await serve_until_signal(
        server, http=http if args.allow_http else None, grpc_restricted=args.grpc_restricted, http_limits=limits,
        grpc=Endpoint(args.grpc_address, args.grpc_port) if args.allow_grpc else None,
        metrics=Endpoint(args.metrics_address or args.http_address, args.metrics_port) if args.allow_metrics else None,
        exit_timeout=args.exit_timeout_secs, drain_delay=args.drain_delay_secs,
        grpc_max_message_bytes=args.grpc_max_message_size, http_tls=args.http_tls, grpc_tls=args.grpc_tls,
        metrics_collectors=[*server.metrics_collectors, frontend.seldon_feedback],
        management=_management_door(server, args), ready_message=f"inferd {__version__} ready", started=started,
        http_workers=args.workers)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h", "--version"):
        argv.insert(0, "serve")  # `inferd --model-repository=...` reads like `tritonserver --model-repository=...`
    parser = build_parser(serve_only=argv[:1] == ["serve"])
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "forward_unknown", False):  # `inferd entrypoint`: the flags it does not know go to serve
        args.serve_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
