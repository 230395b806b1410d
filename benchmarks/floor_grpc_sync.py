"""The grpcio floor (../shared/bench-peers/servers/floor_grpc.py) as grpcio's sync server: `grpc.server` with a
ThreadPoolExecutor of WORKERS threads (default 4), the mlp model run on the handler thread. For bench_grpc.py.

usage: python floor_grpc_sync.py PORT path/to/mlp/1/model.onnx   (environment: WORKERS; OPT: grpc.optimization_target)
"""

from __future__ import annotations

import os
import sys
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[2], options, providers=["CPUExecutionProvider"])


class Servicer(pbg.GRPCInferenceServiceServicer):
    def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(name="mlp", versions=["1"], platform="onnxruntime_onnx",
                                        inputs=[tensor(name="INPUT0", datatype="FP32", shape=[-1, 64])],
                                        outputs=[tensor(name="OUTPUT0", datatype="FP32", shape=[-1, 10])])

    def ModelConfig(self, request: Any, context: Any) -> Any:
        config = mc.ModelConfig(name="mlp", max_batch_size=256)
        config.input.add(name="INPUT0", data_type=mc.TYPE_FP32, dims=[64])
        config.output.add(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[10])
        return pb.ModelConfigResponse(config=config)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(list(tensor.shape))
        y = session.run(None, {"INPUT0": x})[0]
        response = pb.ModelInferResponse(model_name="mlp", model_version="1")
        output = response.outputs.add()
        output.name = "OUTPUT0"
        output.datatype = "FP32"
        output.shape.extend(y.shape)
        response.raw_output_contents.append(y.tobytes())
        return response


def main() -> None:
    server_options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 2**31 - 1)]
    if os.environ.get("OPT"):
        server_options.append(("grpc.optimization_target", os.environ["OPT"]))
    server = grpc.server(futures.ThreadPoolExecutor(int(os.environ.get("WORKERS", "4"))), options=server_options)
    pbg.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
