"""KServe: a `ClusterServingRuntime` that declares what inferd serves, and an `InferenceService` on it.

The runtime follows KServe's own Triton runtime: HTTP on 8080 (KServe's container port), gRPC on 9000, metrics on
8002 (scraped through the `prometheus.kserve.io/*` annotations); the storage initializer puts `storageUri` into
/mnt/models, which the image's entrypoint serves (a repository, or one model under the InferenceService's name).
"""

from __future__ import annotations

from .manifests import MAX_REPLICAS, METRICS_PORT, DeployOptions
from .source import Manifest, repository_source

RUNTIME_NAME = "inferd"
KSERVE_HTTP_PORT = 8080
KSERVE_GRPC_PORT = 9000
PROTOCOL_VERSIONS = ["v1", "v2", "grpc-v2"]
# (format, versions): the model formats of KServe's InferenceService `modelFormat` that inferd's backends serve;
# "triton" is a Triton model repository (config.pbtxt and version folders), any backend.
MODEL_FORMATS = [
    ("triton", ["2"]), ("onnx", ["1"]), ("pytorch", ["1", "2"]), ("tensorflow", ["1", "2"]), ("sklearn", ["1"]),
    ("xgboost", ["1", "2"]), ("lightgbm", ["3", "4"]), ("mlflow", ["1", "2"]),
]
SCALE_TARGET = 8  # in-flight requests per replica (scaleMetric: concurrency)


def cluster_serving_runtime(image: str) -> Manifest:
    formats = [{"name": name, "version": version, "autoSelect": True, "priority": 1}
               for name, versions in MODEL_FORMATS for version in versions]
    container = {
        "name": "kserve-container", "image": image,
        "args": ["--model-name={{.Name}}", f"--http-port={KSERVE_HTTP_PORT}", f"--grpc-port={KSERVE_GRPC_PORT}",
                 f"--metrics-port={METRICS_PORT}"],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ClusterServingRuntime",
            "metadata": {"name": RUNTIME_NAME},
            "spec": {"annotations": {"prometheus.kserve.io/port": str(METRICS_PORT),
                                     "prometheus.kserve.io/path": "/metrics"},
                     "supportedModelFormats": formats, "protocolVersions": list(PROTOCOL_VERSIONS),
                     "multiModel": False, "containers": [container]}}


def inference_service(options: DeployOptions, model_format: str = "triton") -> list[Manifest]:
    """An InferenceService that scales to zero on the inferd runtime, and the repository's ConfigMap for a folder."""
    name = options.resource_name
    source = repository_source(options.repository, name)
    model: Manifest = {"modelFormat": {"name": model_format}, "runtime": RUNTIME_NAME, "protocolVersion": "v2"}
    predictor: Manifest = {"minReplicas": 0, "maxReplicas": MAX_REPLICAS, "scaleMetric": "concurrency",
                           "scaleTarget": SCALE_TARGET, "model": model}
    if source.uri:
        model["storageUri"] = source.uri  # KServe's storage initializer (or claim mount) fills /mnt/models
    else:
        model["volumeMounts"] = source.mounts
        predictor["volumes"] = source.volumes
    service = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
               "metadata": {"name": name}, "spec": {"predictor": predictor}}
    return [*([source.config_map] if source.config_map else []), service]


def kserve_manifests(options: DeployOptions) -> list[Manifest]:
    """The runtime (with the image asked for) and an InferenceService serving the repository on it."""
    return [cluster_serving_runtime(options.image), *inference_service(options)]
