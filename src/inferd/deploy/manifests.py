"""The manifests `inferd deploy kubernetes|knative` prints: plain Kubernetes (Deployment, Service, autoscaler on
pending requests, PodDisruptionBudget) and a Knative Service that scales to zero. deploy/ holds the same shapes as
files and as a Helm chart; the tests validate both against the Kubernetes and Knative schemas."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .._version import __version__
from .entrypoint import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from .source import Manifest, RepositorySource, dns_label, repository_source

DEFAULT_IMAGE = f"inferd:{__version__}"  # `docker build -f deploy/Dockerfile -t inferd:VERSION .`
METRICS_PORT = 8002
# The Prometheus adapter serves this gauge (summed over a pod's models) as a per-pod custom metric; the HPA keeps
# its average at the target, as the single-machine autoscaler keeps pending requests per instance (default 2).
PENDING_METRIC = "nv_inference_pending_request_count"
TARGET_PENDING = "2"
MAX_REPLICAS = 4
KNATIVE_TARGET_CONCURRENCY = "8"  # in-flight requests per pod Knative's autoscaler aims for
DRAIN_DELAY_SECS = 5  # keep answering while endpoints drop the terminating pod (--drain-delay-secs)
EXIT_TIMEOUT_SECS = 30
LABELS = {"app.kubernetes.io/name": "inferd"}


@dataclass(frozen=True)
class DeployOptions:
    """What `inferd deploy` is told: the repository (a folder or a URI), the image, the name of the resources."""

    repository: str
    image: str = DEFAULT_IMAGE
    name: str | None = None

    @property
    def resource_name(self) -> str:
        if self.name:
            return dns_label(self.name)
        return dns_label(Path(self.repository.rstrip("/")).name or "inferd")


def _probe(path: str, port: str | None, period: int, failures: int) -> Manifest:
    get: Manifest = {"path": path}
    if port is not None:
        get["port"] = port
    return {"httpGet": get, "periodSeconds": period, "failureThreshold": failures}


def container(options: DeployOptions, source: RepositorySource, knative: bool = False) -> Manifest:
    """The inferd container: the image's entrypoint (KServe's layout, `STORAGE_URI`, `PORT`) with probes on the V2
    health endpoints. Knative routes one port (it sets `PORT`) and names the probes' port itself."""
    port = None if knative else "http"
    spec: Manifest = {
        "name": "inferd", "image": options.image,
        "args": [f"--drain-delay-secs={DRAIN_DELAY_SECS}", f"--exit-timeout-secs={EXIT_TIMEOUT_SECS}"],
        "ports": ([{"name": "http1", "containerPort": DEFAULT_HTTP_PORT}] if knative else [
            {"name": "http", "containerPort": DEFAULT_HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": DEFAULT_GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]),
        "readinessProbe": _probe("/v2/health/ready", port, 5, 3),
        "livenessProbe": _probe("/v2/health/live", port, 10, 3),
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if not knative:  # a model loads before it is live: up to 10 minutes
        spec["startupProbe"] = _probe("/v2/health/live", port, 5, 120)
    if source.uri:
        spec["env"] = [{"name": "STORAGE_URI", "value": source.uri}]
    if source.mounts:
        spec["volumeMounts"] = source.mounts
    return spec


def kubernetes_manifests(options: DeployOptions) -> list[Manifest]:
    """Deployment, Service (HTTP 8000, gRPC 8001, metrics 8002), HorizontalPodAutoscaler on pending requests,
    PodDisruptionBudget, and the repository's ConfigMap when the repository is a local folder."""
    name = options.resource_name
    source = repository_source(options.repository, name)
    labels = {**LABELS, "app.kubernetes.io/instance": name}
    pod: Manifest = {"containers": [container(options, source)],
                     "terminationGracePeriodSeconds": EXIT_TIMEOUT_SECS + DRAIN_DELAY_SECS + 5,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000}}
    if source.volumes:
        pod["volumes"] = source.volumes
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                   "prometheus.io/path": "/metrics"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
                  "spec": {"selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"selector": labels, "ports": [
                   {"name": "http", "port": DEFAULT_HTTP_PORT, "targetPort": "http", "appProtocol": "http"},
                   {"name": "grpc", "port": DEFAULT_GRPC_PORT, "targetPort": "grpc",
                    "appProtocol": "kubernetes.io/h2c"},
                   {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "appProtocol": "http"}]}}
    autoscaler = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                  "metadata": {"name": name, "labels": labels},
                  "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                           "minReplicas": 1, "maxReplicas": MAX_REPLICAS,
                           "metrics": [{"type": "Pods", "pods": {
                               "metric": {"name": PENDING_METRIC},
                               "target": {"type": "AverageValue", "averageValue": TARGET_PENDING}}}]}}
    budget = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels},
              "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}}
    return [*([source.config_map] if source.config_map else []), deployment, service, autoscaler, budget]


def knative_manifests(options: DeployOptions) -> list[Manifest]:
    """A Knative Service that scales to zero (min-scale 0) and out on in-flight requests per pod."""
    name = options.resource_name
    source = repository_source(options.repository, name)
    annotations = {"autoscaling.knative.dev/metric": "concurrency",
                   "autoscaling.knative.dev/target": KNATIVE_TARGET_CONCURRENCY,
                   "autoscaling.knative.dev/min-scale": "0", "autoscaling.knative.dev/max-scale": str(MAX_REPLICAS)}
    spec: Manifest = {"containers": [container(options, source, knative=True)], "containerConcurrency": 0,
                      "timeoutSeconds": 300}
    if source.volumes:
        spec["volumes"] = source.volumes
    service = {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
               "metadata": {"name": name, "labels": dict(LABELS)},
               "spec": {"template": {"metadata": {"annotations": annotations}, "spec": spec}}}
    return [*([source.config_map] if source.config_map else []), service]


class _ManifestDumper(yaml.SafeDumper):
    """Plain YAML as people write manifests: no anchors for shared dicts, multi-line text as `|` blocks."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text and all(line == line.rstrip() for line in text.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _text)


def to_yaml(manifests: list[Manifest]) -> str:
    """Manifests as one YAML stream (`kubectl apply -f -` reads it), keys in the order they were written."""
    return yaml.dump_all(manifests, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False, width=120)
