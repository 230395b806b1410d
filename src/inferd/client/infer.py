"""`inferd infer`: send images or tensors to a model on a running V2 server and print the answer.

Images (a file or a folder) go as NVIDIA's image_client.py sends them and print as it prints them (image.py);
`.json` / `.npy` files are the inputs of any model, and its outputs print as a table or as JSON. It talks to any V2
server (inferd, Triton, KServe runtimes) through tritonclient's HTTP or gRPC client.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..types import V2_TO_NUMPY
from .image import SCALINGS, class_lines, image_files, parse_model, preprocess

__all__ = ["add_infer_parser", "run_infer"]

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
_TENSOR_SUFFIXES = (".json", ".npy")
_EXAMPLES = """\
examples:
  inferd infer -m resnet50 -c 3 -s INCEPTION mug.jpg            as NVIDIA's image_client.py
  inferd infer -m densenet_onnx -i grpc --async -b 1 images/
  inferd infer -m simple inputs.json                             {"INPUT0": [[...]], "INPUT1": [[...]]}
  inferd infer -m simple INPUT0=a.npy INPUT1=b.npy --output-format json

Exit status: 0 when every request succeeded, 1 otherwise.
"""


def add_infer_parser(commands: Any) -> None:
    """Register `infer` on the `inferd` sub-commands; `args.func(args)` runs it."""
    parser = commands.add_parser(
        "infer", help="classify images (as NVIDIA's image_client) or send tensors to a model",
        description="Send images to an image classification model and print its top classes exactly as NVIDIA's "
        "image_client.py does, or send .json / .npy inputs to any model and print its outputs.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model-name", required=True, help="name of the model")
    parser.add_argument("-x", "--model-version", default="", help="version of the model (default: the latest)")
    parser.add_argument("-b", "--batch-size", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("-c", "--classes", type=int, default=1, help="class results to report (default 1)")
    parser.add_argument("-s", "--scaling", type=str.upper, choices=SCALINGS, default="NONE",
                        help="scaling of image pixels: INCEPTION to [-1, 1], VGG minus the ImageNet means "
                        "(default NONE)")
    parser.add_argument("-u", "--url", default=None,
                        help="server as host:port (default localhost:8000 for HTTP, localhost:8001 for gRPC)")
    parser.add_argument("-i", "--protocol", type=str.lower, choices=["http", "grpc"], default="http",
                        help="protocol (default HTTP)")
    parser.add_argument("-a", "--async", dest="async_set", action="store_true",
                        help="send every request before reading any answer (the clients' async API)")
    parser.add_argument("--output-format", choices=["table", "json"], default="table",
                        help="how tensor outputs print (default table; images print as image_client.py)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="an image or a folder of images; or tensor inputs: one .json file (input name -> "
                        "nested list, or a V2 request body), or .npy files (NAME=FILE.npy, or in the model's input "
                        "order)")
    parser.set_defaults(func=run_infer)


@dataclass(slots=True)
class _Connection:
    protocol: str
    client: Any
    module: Any  # tritonclient.http or tritonclient.grpc
    model: str
    version: str

    def metadata_and_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.protocol == "grpc":
            metadata = self.client.get_model_metadata(self.model, self.version, as_json=True)
            config = self.client.get_model_config(self.model, self.version, as_json=True)["config"]
            return metadata, config
        return (self.client.get_model_metadata(self.model, self.version),
                self.client.get_model_config(self.model, self.version))

    def send(self, tensors: Mapping[str, np.ndarray], datatypes: Mapping[str, str], outputs: list[Any],
             request_id: str, pending: queue.Queue[Any] | None) -> Any:
        """One request; its result, or (async) its handle (HTTP) / None with the result put on `pending` (gRPC)."""
        inputs = []
        for name, array in tensors.items():
            tensor = self.module.InferInput(name, list(array.shape), datatypes[name])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        options = {"request_id": request_id, "model_version": self.version, "outputs": outputs or None}
        if pending is None:
            return self.client.infer(self.model, inputs, **options)
        if self.protocol == "grpc":
            self.client.async_infer(self.model, inputs, partial(_completed, pending), **options)
            return None
        return self.client.async_infer(self.model, inputs, **options)


def _completed(pending: queue.Queue[Any], result: Any, error: Any) -> None:
    pending.put((result, error))


def _connect(args: argparse.Namespace) -> _Connection:
    try:
        if args.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise RuntimeError(f"needs tritonclient's {args.protocol} client ({exc}): pip install 'inferd[infer]'") \
            from None
    url = args.url or f"localhost:{DEFAULT_PORTS[args.protocol]}"
    if args.protocol == "http":
        client = module.InferenceServerClient(url=url, concurrency=20 if args.async_set else 1)
    else:
        client = module.InferenceServerClient(url=url)
    return _Connection(args.protocol, client, module, args.model_name, args.model_version)


def run_infer(args: argparse.Namespace) -> int:
    from tritonclient.utils import InferenceServerException

    if args.batch_size < 1:
        print("inferd infer: --batch-size must be at least 1", file=sys.stderr)
        return 2
    paths = [Path(p.partition("=")[2] or p) if "=" in p else Path(p) for p in args.inputs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"inferd infer: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        connection = _connect(args)
        try:
            metadata, config = connection.metadata_and_config()
        except InferenceServerException as exc:
            print(f"failed to retrieve the metadata or config: {exc}")
            return 1
        if all(p.suffix.lower() in _TENSOR_SUFFIXES for p in paths):
            return _run_tensors(connection, args, metadata, config)
        return _run_images(connection, args, metadata, config, paths)
    except InferenceServerException as exc:
        print(f"inference failed: {exc}")
        return 1
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"inferd infer: {exc}", file=sys.stderr)
        return 1


# ---- images ----

def _run_images(connection: _Connection, args: argparse.Namespace, metadata: dict[str, Any],
                config: dict[str, Any], paths: list[Path]) -> int:
    from PIL import Image

    model = parse_model(metadata, config)
    batching = model.max_batch_size > 0
    if not batching and args.batch_size != 1:
        print("ERROR: This model doesn't support batching.")
        return 1
    files = [f for path in paths for f in image_files(path)]
    if not files:
        raise ValueError("no image files found")
    images = []
    for file in files:
        with Image.open(file) as image:
            images.append(preprocess(image, model, args.scaling))
    batches = _batches(images, args.batch_size)
    outputs = [connection.module.InferRequestedOutput(model.output_name, class_count=args.classes)]
    results = _send_all(connection, [{model.input_name: np.stack(b) if batching else b[0]} for b in batches],
                        {model.input_name: model.datatype}, outputs, args.async_set)
    for request_id, result in results:
        print(f"Request {request_id}, batch size {args.batch_size}")
        classes = result.as_numpy(model.output_name)
        if batching and len(classes) != args.batch_size:
            raise ValueError(f"expected {args.batch_size} results, got {len(classes)}")
        for line in class_lines(classes, batching):
            print(line)
    print("PASS")
    return 0


def _batches(images: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    """Batches of `size` images; the last one is filled by starting over from the first image (image_client.py's
    rule: every image is sent at least once)."""
    batches, index, done = [], 0, False
    while not done:
        batch = []
        for _ in range(size):
            batch.append(images[index])
            index = (index + 1) % len(images)
            done = done or index == 0
        batches.append(batch)
    return batches


def _send_all(connection: _Connection, requests: list[dict[str, np.ndarray]], datatypes: Mapping[str, str],
              outputs: list[Any], async_set: bool) -> list[tuple[str, Any]]:
    """Send the requests (ids "1", "2", ...) one after the other, or all before any answer is read (--async);
    (id, result) in the order they were sent."""
    pending: queue.Queue[Any] | None = queue.Queue() if async_set else None
    handles = [connection.send(tensors, datatypes, outputs, str(i), pending) for i, tensors in
               enumerate(requests, start=1)]
    if pending is None:
        results = handles
    elif connection.protocol == "http":
        results = [handle.get_result() for handle in handles]
    else:
        results = []
        for _ in requests:
            result, error = pending.get()
            if error is not None:
                raise error
            results.append(result)
    ids = [_request_id(connection.protocol, r) for r in results]
    return sorted(zip(ids, results, strict=True), key=lambda pair: int(pair[0]) if pair[0].isdigit() else 0)


def _request_id(protocol: str, result: Any) -> str:
    response = result.get_response()
    return str(response.id if protocol == "grpc" else response.get("id", ""))


# ---- tensors ----

def _run_tensors(connection: _Connection, args: argparse.Namespace, metadata: dict[str, Any],
                 config: dict[str, Any]) -> int:
    specs = {t["name"]: t for t in metadata.get("inputs", [])}
    tensors = _read_tensors(args.inputs, specs)
    datatypes = {name: specs[name]["datatype"] for name in tensors}
    _, result = _send_all(connection, [tensors], datatypes, [], args.async_set)[0]
    answer = result.get_response(as_json=True) if connection.protocol == "grpc" else result.get_response()
    outputs = [(o["name"], o["datatype"], result.as_numpy(o["name"])) for o in answer.get("outputs", [])]
    if args.output_format == "json":
        print(json.dumps({"model_name": connection.model, "outputs": [
            {"name": name, "datatype": datatype, "shape": list(array.shape), "data": _plain(array)}
            for name, datatype, array in outputs]}, indent=2))
    else:
        print(_table(outputs))
    return 0


def _read_tensors(items: Sequence[str], specs: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The request's inputs from the command line's files, cast to the datatypes the model's metadata gives."""
    found: dict[str, Any] = {}
    order = list(specs)
    for position, item in enumerate(items):
        name, equals, file = item.partition("=")
        path = Path(file if equals else item)
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("inputs"), list):  # a V2 request body
                data = {t["name"]: np.reshape(np.array(t["data"], dtype=object), t["shape"])
                        for t in data["inputs"]}
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected an object of input name -> values")
            found.update(data)
        else:
            if not equals:
                if position >= len(order):
                    raise ValueError(f"{path}: the model has {len(order)} input(s); name the file's input as "
                                     "NAME=FILE.npy")
                name = order[position]
            found[name] = np.load(path, allow_pickle=False)
    unknown = sorted(set(found) - set(specs))
    if unknown:
        raise ValueError(f"the model has no input {', '.join(unknown)} (its inputs: {', '.join(specs)})")
    return {name: _typed(value, specs[name]["datatype"]) for name, value in found.items()}


def _typed(value: Any, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        array = np.array(value, dtype=object)
        return np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])(array) \
            if array.size else array
    return np.asarray(value, dtype=V2_TO_NUMPY[datatype])


def _plain(array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
    return array.reshape(-1).tolist()


def _table(outputs: list[tuple[str, str, np.ndarray]]) -> str:
    """One block per output: `NAME  DATATYPE  [SHAPE]` then its values, as numpy prints them."""
    blocks = []
    for name, datatype, array in outputs:
        shown = array
        if array.dtype == np.object_:
            shown = np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                                 otypes=[object])(array)
        blocks.append(f"{name}  {datatype}  {list(array.shape)}\n{np.array2string(shown, threshold=64)}")
    return "\n\n".join(blocks)

