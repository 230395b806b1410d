"""Pure logic behind the first-hour fixes: Triton's --backend-config parsing, the port check that runs before any
door starts, and the hint a Seldon class's type error gets."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from inferd.backends.settings import DEFAULT_MAX_BATCH_SIZE, BackendSettings, batch_by_default
from inferd.compat.seldon.component import SeldonComponent
from inferd.compat.seldon.protocol import SeldonFailure, answer
from inferd.config import ModelConfig
from inferd.frontends.runner import Endpoint, ListenError, check_ports

HOST = "127.0.0.1"


# ---- --backend-config ----

def test_default_max_batch_size_is_tritons_4_without_the_flag() -> None:
    assert BackendSettings.parse([]).default_max_batch_size("onnxruntime") == DEFAULT_MAX_BATCH_SIZE == 4


@pytest.mark.parametrize(("options", "backend", "expected"), [
    (["default-max-batch-size=6"], "onnxruntime", 6),
    (["onnxruntime,default-max-batch-size=5"], "onnxruntime", 5),
    (["onnxruntime,default-max-batch-size=5"], "tensorflow", 4),
    # As Triton's backend_config test: the backend's own value wins over the one for every backend.
    (["default-max-batch-size=7", "tensorflow,default-max-batch-size=8"], "tensorflow", 8),
    (["default-max-batch-size=7", "tensorflow,default-max-batch-size=8"], "pytorch", 7),
    (["tensorflow,default-max-batch-size=8", "default-max-batch-size=7"], "tensorflow", 8),
    (["default-max-batch-size=0"], "onnxruntime", 0),
    (["default-max-batch-size=3", "default-max-batch-size=9"], "onnxruntime", 9),  # the later one
])
def test_backend_config_resolution(options: list[str], backend: str, expected: int) -> None:
    assert BackendSettings.parse(options).default_max_batch_size(backend) == expected


@pytest.mark.parametrize("option", [
    ",default-max-batch-size=3", "default-max-batch-size=", "default-max-batch-size",
    "tensorflow,default-max-batch-size=", "tensorflow,default-max-batch-size",
])
def test_malformed_backend_config_is_refused_in_tritons_words(option: str) -> None:
    with pytest.raises(ValueError, match="--backend-config option format is") as caught:
        BackendSettings.parse([option])
    assert option in str(caught.value)


@pytest.mark.parametrize("value", ["-1", "four", "2.5"])
def test_default_max_batch_size_must_be_a_non_negative_integer(value: str) -> None:
    with pytest.raises(ValueError, match="default-max-batch-size must be an integer >= 0"):
        BackendSettings.parse([f"onnxruntime,default-max-batch-size={value}"])


def test_settings_inferd_does_not_use_are_listed_for_the_warning() -> None:
    settings = BackendSettings.parse(["tensorflow,version=2", "python,shm-default-byte-size=1048576",
                                      "default-max-batch-size=2", "foo=a,b"])
    assert settings.unused() == ["tensorflow,version", "python,shm-default-byte-size", "foo"]
    assert settings.get("", "foo") == "a,b"  # a value may hold a comma


@pytest.mark.parametrize(("size", "max_batch_size", "dynamic"), [(8, 8, True), (1, 1, False), (0, 0, False)])
def test_batch_by_default_as_triton(size: int, max_batch_size: int, dynamic: bool) -> None:
    config = ModelConfig()
    batch_by_default(config, size)
    assert config.max_batch_size == max_batch_size
    assert config.HasField("dynamic_batching") is dynamic


def test_batch_by_default_keeps_a_chosen_scheduler() -> None:
    config = ModelConfig()
    config.sequence_batching.SetInParent()
    batch_by_default(config, 8)
    assert config.max_batch_size == 8 and not config.HasField("dynamic_batching")


# ---- ports ----

def test_a_port_in_use_names_the_door_and_its_flag() -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            check_ports({"http": Endpoint(HOST, 0), "grpc": None, "metrics": Endpoint(HOST, port)})
    text = str(caught.value)
    assert text == (f"cannot listen on {HOST}:{port} (metrics): the port is already in use; stop what holds it, "
                    "or pick another port with --metrics-port")


def test_free_ports_and_port_0_pass() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    check_ports({"http": Endpoint(HOST, port), "grpc": Endpoint(HOST, 0), "metrics": Endpoint(HOST, 0)})


def test_two_doors_on_one_port_of_one_address_are_refused() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    with pytest.raises(ListenError, match=f"port {port} for gRPC: --http-port names it too"):
        check_ports({"http": Endpoint("0.0.0.0", port), "grpc": Endpoint(HOST, port)})
    # One port number on two different addresses is two listeners (the second address: any other loopback one).
    check_ports({"http": Endpoint(HOST, port), "metrics": Endpoint("127.0.0.2", port)})


def test_an_address_not_of_this_host_names_the_address_flag() -> None:
    with pytest.raises(ListenError, match="--grpc-address and --grpc-port"):
        check_ports({"grpc": Endpoint("192.0.2.1", 8001)})  # TEST-NET-1: never a local address


# ---- Seldon: a class that cannot take what strData gives it ----

class ReadmeModel:
    """The README's class: fine for ndarray data, not for a string."""

    def predict(self, X: Any, features_names: list[str], meta: Any = None) -> Any:
        return X * 2.0


def test_a_type_error_on_str_data_says_what_x_was() -> None:
    component = SeldonComponent(ReadmeModel(), "ReadmeModel")
    try:
        with pytest.raises(SeldonFailure) as caught:
            answer(component, "predict", {"strData": "hi"})
        status = caught.value.body["status"]
        assert caught.value.status == 500 and status["reason"] == "MICROSERVICE_INTERNAL_ERROR"
        assert status["info"].startswith("TypeError: can't multiply sequence")
        assert status["info"].endswith("(predict got X as a str: the request's strData)")
        # The same class with ndarray data works, and its errors of other kinds keep their plain text.
        assert answer(component, "predict", {"data": {"ndarray": [[1, 2]]}})[1]["data"]["ndarray"] == [[2.0, 4.0]]
    finally:
        component.close()
