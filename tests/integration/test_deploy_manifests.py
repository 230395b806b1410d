"""What a user applies to a cluster is valid there: every manifest in deploy/, the Helm chart rendered, and every
`inferd deploy kubernetes|knative|kserve` output validate offline against the Kubernetes schemas
(`kubernetes-validate`, strict: unknown fields rejected) and, for KServe and Knative resources, against their CRDs'
OpenAPI schemas (tests/data/k8s-schemas/, strict too). The Dockerfile is linted (hadolint) and checked for what the
image promises; the image's entrypoint starts a real server from a ConfigMap-shaped /mnt/models.

No cluster, Docker daemon or `helm` binary here: the chart is linted by Helm's own Go library (helm-sdkpy, installed by
.ci/run) and rendered for schema checks by substituting `.Values` into its templates (tests/helm_values.py), which
keeps the templates to plain substitutions, `if`, and `toYaml | nindent`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

from helm_values import render_chart
from inferd._version import __version__
from inferd.cli import main
from inferd.deploy.kserve import MODEL_FORMATS, cluster_serving_runtime
from inferd.deploy.manifests import PENDING_METRIC
from models import neg_model
from serving import HOST, INFERD, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "inferd"
SCHEMAS = ROOT / "tests" / "data" / "k8s-schemas"
# The oldest Kubernetes still supported by its project when this was written, and the newest the package ships.
K8S_VERSIONS = ["1.31.0", kubernetes_validate.utils.latest_version()]
CRDS = {("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "kserve-clusterservingruntime-v1alpha1.json",
        ("serving.kserve.io/v1alpha1", "ServingRuntime"): "kserve-clusterservingruntime-v1alpha1.json",
        ("serving.kserve.io/v1beta1", "InferenceService"): "kserve-inferenceservice-v1beta1.json",
        ("serving.knative.dev/v1", "Service"): "knative-service-v1.json"}
Manifest = dict[str, Any]


# ---- validation ----

def _strict(schema: Any) -> Any:
    """A CRD's OpenAPI v3 schema as a JSON Schema that rejects what the API server's strict validation rejects."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(s) for s in schema[key]]
    return out


_validators: dict[str, jsonschema.Draft202012Validator] = {}


def _crd_validator(file: str) -> jsonschema.Draft202012Validator:
    if file not in _validators:
        schema = json.loads((SCHEMAS / file).read_text())["openAPIV3Schema"]
        _validators[file] = jsonschema.Draft202012Validator(_strict(schema))
    return _validators[file]


# Names, which the API server checks beyond the schemas: a DNS subdomain, and a DNS label for what becomes a host name.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KINDS = {"Service", "InferenceService"}


def _name_problems(doc: Manifest) -> list[str]:
    name = str(doc.get("metadata", {}).get("name", ""))
    label = doc.get("kind") in _LABEL_KINDS
    if (label and (len(name) > 63 or not _LABEL.match(name))) or len(name) > 253 or not _SUBDOMAIN.match(name):
        return [f"metadata/name: {name!r} is not a valid {'DNS-1035 label' if label else 'DNS subdomain'}"]
    return []


def problems(doc: Manifest, k8s_version: str = K8S_VERSIONS[-1]) -> list[str]:
    """Why the API server would reject `doc` (empty when it validates)."""
    crd = CRDS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    names = _name_problems(doc)
    if names:
        return names
    try:
        if crd is None:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
            return []
        found = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _crd_validator(crd).iter_errors(doc)]
        # A CRD's schema says only `metadata: {type: object}`; the API server checks it as any object's metadata.
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})},
                                     k8s_version, strict=True)
        return found
    except kubernetes_validate.ValidationError as error:
        return [f"{'/'.join(map(str, error.path))}: {error.message}"]


def assert_valid(docs: list[Manifest], where: str) -> None:
    assert docs, f"{where}: no manifests"
    for doc in docs:
        assert doc.get("metadata", {}).get("name"), f"{where}: a {doc.get('kind')} without a name"
        for version in K8S_VERSIONS:
            found = problems(doc, version)
            assert not found, f"{where}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {found}"


def test_the_checks_reject_what_a_cluster_rejects() -> None:
    """The validation is strict: a misspelt field, a wrong type or a field a CRD lacks is caught."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "a", "imagee": "b"}]}}}}
    assert problems(deployment)
    service = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "x"},
               "spec": {"template": {"spec": {"containers": [{"image": "b", "ports": [{"containerPort": "80"}]}]}}}}
    assert problems(service)
    runtime = cluster_serving_runtime("inferd:test")
    runtime["spec"]["protocolVersion"] = ["v2"]  # the field is protocolVersions
    assert problems(runtime)
    runtime = cluster_serving_runtime("inferd:test")
    runtime["metadata"]["name"] = "Not A Name!"
    assert problems(runtime)


# ---- deploy/ as it is ----

def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.y*ml") if CHART not in p.parents)


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_in_deploy_validates(path: Path) -> None:
    assert_valid([d for d in yaml.safe_load_all(path.read_text()) if d], str(path.relative_to(ROOT)))


def _load(relative: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all((DEPLOY / relative).read_text()) if d]


def test_the_kserve_runtime_declares_the_formats_and_protocols() -> None:
    [runtime] = _load("kserve/clusterservingruntime.yaml")
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert formats == {"onnx", "pytorch", "tensorflow", "sklearn", "xgboost", "lightgbm", "mlflow", "triton"}
    assert runtime["spec"]["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    # `inferd deploy kserve` prints this very runtime, so the file and the command cannot drift apart
    assert runtime == cluster_serving_runtime(runtime["spec"]["containers"][0]["image"])
    assert {name for name, _ in MODEL_FORMATS} == formats


def test_the_kserve_examples_scale_to_zero_from_a_bucket_and_canary() -> None:
    services = [d for f in sorted((DEPLOY / "kserve").glob("inferenceservice*.yaml")) for d in _load(str(f))]
    predictors = [s["spec"]["predictor"] for s in services]
    assert all(p["minReplicas"] == 0 for p in predictors)
    assert all(p["model"]["storageUri"].startswith("s3://") for p in predictors)
    assert any(p.get("canaryTrafficPercent") for p in predictors)
    assert {p["model"]["modelFormat"]["name"] for p in predictors} >= {"triton", "onnx"}


def test_the_knative_service_scales_to_zero_on_concurrency() -> None:
    [service] = _load("knative/service.yaml")
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    assert int(annotations["autoscaling.knative.dev/target"]) > 0


# ---- inferd deploy ----

@pytest.fixture(scope="module")
def small_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository small enough for a ConfigMap: one model with a config (text) and its ONNX file (binary)."""
    root = tmp_path_factory.mktemp("deploy") / "models"
    (root / "neg" / "1").mkdir(parents=True)
    (root / "neg" / "1" / "model.onnx").write_bytes(neg_model())
    (root / "neg" / "config.pbtxt").write_text('name: "neg"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    return root


def deploy(capsys: pytest.CaptureFixture[str], *args: str) -> list[Manifest]:
    assert main(["deploy", *args]) == 0
    return [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]


REPOSITORIES = ["s3://my-bucket/model_repository", "pvc://models-claim/repository", "FOLDER"]


@pytest.mark.parametrize("repository", REPOSITORIES)
@pytest.mark.parametrize("target", ["kubernetes", "knative", "kserve"])
def test_every_inferd_deploy_output_validates(target: str, repository: str, small_repository: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    repository = str(small_repository) if repository == "FOLDER" else repository
    docs = deploy(capsys, target, "--repository", repository, "--image", "registry.example.com/inferd:1")
    assert_valid(docs, f"inferd deploy {target} --repository {repository}")
    kinds = [d["kind"] for d in docs]
    assert kinds.count("ConfigMap") == (repository == str(small_repository))
    expected = {"kubernetes": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
                "knative": {"Service"}, "kserve": {"ClusterServingRuntime", "InferenceService"}}[target]
    assert expected <= set(kinds)
    images = {c["image"] for d in docs for c in _containers(d)}
    assert images == {"registry.example.com/inferd:1"}


def _containers(doc: Manifest) -> Iterator[Manifest]:
    """The containers of a Deployment's or a Knative Service's pod template, or of a ServingRuntime."""
    spec = doc.get("spec", {})
    yield from spec.get("template", {}).get("spec", {}).get("containers", [])
    yield from spec.get("containers", [])


def test_kubernetes_output_autoscales_on_pending_requests(capsys: pytest.CaptureFixture[str]) -> None:
    docs = {d["kind"]: d for d in deploy(capsys, "kubernetes", "--repository", "s3://b/repo", "--name", "Vision")}
    assert docs["Deployment"]["metadata"]["name"] == "vision"
    [metric] = docs["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "nv_inference_pending_request_count"
    ports = {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {"name": "STORAGE_URI", "value": "s3://b/repo"} in container["env"]


def test_a_folder_too_large_for_a_config_map_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "big" / "m" / "1").mkdir(parents=True)
    (tmp_path / "big" / "m" / "1" / "model.onnx").write_bytes(os.urandom(800 * 1024))
    assert main(["deploy", "kubernetes", "--repository", str(tmp_path / "big")]) == 2
    assert "upload it" in capsys.readouterr().err


def test_a_path_of_this_machine_is_refused_with_the_way_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "knative", "--repository", "file:///srv/models"]) == 2
    assert "a URI the cluster can reach" in capsys.readouterr().err
    assert main(["deploy", "kserve", "--repository", "/no/such/folder"]) == 2
    assert "neither a folder nor a URI" in capsys.readouterr().err


def mount_config_map(docs: list[Manifest], mount: Path) -> Path:
    """What the kubelet puts at the ConfigMap volume's mount path: each item's key written at the item's path."""
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    volumes = [v for d in docs for v in _pod_volumes(d) if "configMap" in v]
    [volume] = volumes
    for item in volume["configMap"]["items"]:
        key = item["key"]
        data = (config_map.get("data", {}).get(key, "").encode() if key in config_map.get("data", {})
                else base64.b64decode(config_map["binaryData"][key]))
        (mount / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (mount / item["path"]).write_bytes(data)
    return mount


def _pod_volumes(doc: Manifest) -> list[Manifest]:
    spec = doc.get("spec", {})
    return [*spec.get("template", {}).get("spec", {}).get("volumes", []), *spec.get("predictor", {}).get("volumes", [])]


def test_the_config_map_carries_the_repository_byte_for_byte(small_repository: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    docs = deploy(capsys, "kubernetes", "--repository", str(small_repository))
    mounted = mount_config_map(docs, tmp_path / "mnt")
    files = sorted(p.relative_to(small_repository) for p in small_repository.rglob("*") if p.is_file())
    assert sorted(p.relative_to(mounted) for p in mounted.rglob("*") if p.is_file()) == files
    assert all((mounted / f).read_bytes() == (small_repository / f).read_bytes() for f in files)


# ---- the image's entrypoint ----

class EntrypointProcess(ServerProcess):
    """`inferd entrypoint` as the image runs it, with the platform's environment."""

    def __init__(self, model_dir: Path, log_path: Path, env: dict[str, str], *args: str) -> None:
        command = [str(INFERD), "entrypoint", "--model-dir", str(model_dir), *args, "--http-address", HOST,
                   "--grpc-address", HOST, "--metrics-port", "0"]
        self._start(command, log_path, {**os.environ, "PYTHONUNBUFFERED": "1", **env}, None)


def test_the_entrypoint_serves_one_model_mounted_like_kserve(tmp_path: Path) -> None:
    """A single model's folder at /mnt/models (as KServe's storage initializer leaves a storageUri naming one model),
    served under the InferenceService's name; Knative's PORT picks the HTTP port; the HPA's metric is exported."""
    mnt = tmp_path / "mnt" / "models"
    mnt.mkdir(parents=True)
    (mnt / "model.onnx").write_bytes(neg_model())
    server = EntrypointProcess(mnt, tmp_path / "inferd.log",
                               {"PORT": "0", "PROTOCOL": "v2", "TMPDIR": str(tmp_path)},
                               "--model-name", "densenet", "--grpc-port", "0")
    try:
        server.wait_live()
        assert httpx.get(f"{server.base_url}/v2/models/densenet/ready", timeout=10).status_code == 200
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, -2, 3, 0.5]}]}
        answer = httpx.post(f"{server.base_url}/v2/models/densenet/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [-1, 2, -3, -0.5]
        metrics = httpx.get(f"http://{HOST}:{server.metrics_port}/metrics", timeout=10).text
        assert re.search(rf"^{PENDING_METRIC}\{{.*model=\"densenet\"", metrics, re.MULTILINE)
        assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=10).status_code == 200
    finally:
        server.stop()


def test_the_entrypoint_serves_what_inferd_deploy_ships_in_a_config_map(
        small_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = deploy(capsys, "knative", "--repository", str(small_repository))
    mounted = mount_config_map(docs, tmp_path / "mnt")
    server = EntrypointProcess(mounted, tmp_path / "inferd.log", {"PORT": "0"}, "--grpc-port", "0")
    try:
        server.wait_live()
        assert httpx.get(f"{server.base_url}/v2/models/neg/ready", timeout=10).status_code == 200
    finally:
        server.stop()


def test_the_entrypoint_says_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_URI", "PORT", "PROTOCOL")}
    done = subprocess.run([str(INFERD), "entrypoint", "--model-dir", str(tmp_path / "none")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "STORAGE_URI is not set" in done.stderr


# ---- the Helm chart ----

CHART_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def test_the_chart_renders_valid_manifests_with_its_defaults() -> None:
    docs = render_chart(CHART, CHART_VALUES, release="models")
    assert_valid(docs, "helm chart (default values)")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["args"] == [CHART_VALUES["repository"]["storageUri"], "/mnt/models"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "replicas" not in kinds["Deployment"]["spec"]  # the autoscaler owns it
    [metric] = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == PENDING_METRIC
    assert {p["port"] for p in kinds["Service"]["spec"]["ports"]} == {8000, 8001, 8002}


def test_the_chart_serves_a_config_map_repository(small_repository: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The values a user copies from `inferd deploy kubernetes --repository ./models` give the same files."""
    printed = deploy(capsys, "kubernetes", "--repository", str(small_repository))
    [config_map] = [d for d in printed if d["kind"] == "ConfigMap"]
    [volume] = [v for d in printed for v in _pod_volumes(d)]
    values = copy.deepcopy(CHART_VALUES)
    values["repository"].update(storageUri="", data=config_map.get("data", {}),
                                binaryData=config_map.get("binaryData", {}), items=volume["configMap"]["items"])
    values["autoscaling"]["enabled"] = False
    docs = render_chart(CHART, values, release="models")
    assert_valid(docs, "helm chart (ConfigMap repository, no autoscaler)")
    kinds = {d["kind"]: d for d in docs}
    assert "HorizontalPodAutoscaler" not in kinds and kinds["Deployment"]["spec"]["replicas"] == 1
    assert "initContainers" not in kinds["Deployment"]["spec"]["template"]["spec"]
    mounted = mount_config_map(list(kinds.values()), tmp_path / "mnt")
    assert (mounted / "neg" / "1" / "model.onnx").read_bytes() == (small_repository / "neg/1/model.onnx").read_bytes()


def _helm_lint(chart: Path) -> list[str]:
    """Helm's own lint (it renders every template with the chart's values): the `helm` binary when there is one,
    else Helm's Go library through helm-sdkpy. Returns the warnings and errors."""
    helm = shutil.which("helm")
    if helm:
        done = subprocess.run([helm, "lint", "--strict", str(chart)], capture_output=True, text=True, timeout=120)
        return [] if done.returncode == 0 else [done.stdout + done.stderr]
    import helm_sdkpy  # type: ignore[import-not-found]

    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart)))
    return [f"{m['Path']}: severity {m['Severity']} {m['Err']}" for m in result["Messages"] if m["Severity"] >= 2]


def _helm_available() -> bool:
    if shutil.which("helm"):
        return True
    try:
        import helm_sdkpy  # noqa: F401
    except ImportError:
        if os.environ.get("INFERD_REQUIRE_HELM"):
            raise
        return False
    return True


@pytest.mark.skipif(not _helm_available(), reason="no helm binary and no helm-sdkpy (.ci/run installs it)")
def test_helm_lints_the_chart_and_catches_a_broken_template(tmp_path: Path) -> None:
    assert _helm_lint(CHART) == []
    broken = shutil.copytree(CHART, tmp_path / "inferd")
    service = broken / "templates" / "service.yaml"
    service.write_text(service.read_text().replace(".Values.service.type }}", ".Values.service.type | nosuch }}"))
    assert _helm_lint(broken)


@pytest.mark.skipif(not shutil.which("helm"), reason="`helm template` needs the helm binary (not installable here)")
def test_helm_template_renders_valid_manifests() -> None:
    done = subprocess.run(["helm", "template", "models", str(CHART)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_valid([d for d in yaml.safe_load_all(done.stdout) if d], "helm template")


# ---- the Dockerfile ----

DOCKERFILE = DEPLOY / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def test_the_dockerfile_copies_only_what_exists_and_the_context_keeps() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for instruction, args in _instructions():
        if instruction == "COPY" and "--from" not in args:
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the build context"
                assert source.rstrip("/") in kept, f"COPY {source}: Dockerfile.dockerignore leaves it out"


def test_the_image_runs_the_cli_entrypoint_as_a_user_with_a_healthcheck() -> None:
    instructions = _instructions()
    final = instructions[max(i for i, (name, _) in enumerate(instructions) if name == "FROM"):]
    assert re.match(r"python:\$\{PYTHON_VERSION\}-slim$", dict(final)["FROM"])
    users = [args for name, args in final if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["inferd", "entrypoint"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["inferd"] == "inferd.cli:main"
    with pytest.raises(SystemExit) as exited:  # the command the image runs exists
        main(["entrypoint", "--help"])
    assert exited.value.code == 0
    [healthcheck] = [args for name, args in final if name == "HEALTHCHECK"]
    assert "/v2/health/ready" in healthcheck
    args = dict(re.match(r"(\w+)=(\S*)", a).groups() for name, a in instructions if name == "ARG" and "=" in a)
    assert args["INFERD_VERSION"] == __version__
    extras = pyproject["project"]["optional-dependencies"]
    assert all(extra in extras for extra in args["EXTRAS"].split(","))
    assert any("${EXTRAS}" in a for name, a in final if name == "RUN")


@pytest.mark.skipif(not shutil.which("hadolint", path=str(Path(sys.executable).parent) + os.pathsep
                                     + os.environ.get("PATH", "")), reason="hadolint not installed")
def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    assert hadolint
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
