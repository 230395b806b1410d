"""Running inferd on Kubernetes: the manifests `inferd deploy` prints and the container's entrypoint.

The files themselves (Dockerfile, Helm chart, KServe runtime, Knative service) live in the repository's deploy/
folder, out of the serving package; this package holds only what the CLI and the image run.
"""

from __future__ import annotations

from .entrypoint import KSERVE_MODEL_DIR, ServePlan, folder_layout, plan_serve, run_entrypoint
from .kserve import cluster_serving_runtime, inference_service, kserve_manifests
from .manifests import DEFAULT_IMAGE, DeployOptions, knative_manifests, kubernetes_manifests, to_yaml
from .source import RepositorySource, dns_label, repository_source

__all__ = [
    "DEFAULT_IMAGE", "KSERVE_MODEL_DIR", "TARGETS", "DeployOptions", "RepositorySource", "ServePlan",
    "cluster_serving_runtime", "dns_label", "folder_layout", "inference_service", "knative_manifests",
    "kserve_manifests", "kubernetes_manifests", "plan_serve", "repository_source", "run_entrypoint", "to_yaml",
]

TARGETS = {"kubernetes": kubernetes_manifests, "knative": knative_manifests, "kserve": kserve_manifests}
