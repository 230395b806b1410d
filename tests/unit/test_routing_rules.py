"""Routing by host and by path (gateway/routing.py): which model a host, a /serving/ prefix or both name."""

from __future__ import annotations

import pytest

from inferd.gateway.routing import HostRouting, routed_model, split_serving_path
from inferd.types import ErrorKind, InferError


@pytest.mark.parametrize(("host", "model"), [
    ("mlp.models.example.com", "mlp"),
    ("MLP.Models.Example.Com", "mlp"),
    ("mlp.models.example.com:8000", "mlp"),
    ("  mlp.models.example.com  ", "mlp"),
    ("my_model-2.models.example.com", "my_model-2"),
    ("models.example.com", None),
    ("a.b.models.example.com", None),
    ("mlp.models.example.com.evil.org", None),
    ("mlpXmodels.example.com", None),
    ("127.0.0.1:8000", None),
    ("[::1]:8000", None),
    ("", None),
    (None, None),
])
def test_host_pattern(host: str | None, model: str | None) -> None:
    assert HostRouting("{model}.models.example.com").model_of(host) == model


def test_the_model_may_sit_anywhere_in_the_host() -> None:
    hosts = HostRouting("inferd-{model}.Example.COM")
    assert hosts.model_of("inferd-mlp.example.com:80") == "mlp"
    assert hosts.model_of("mlp.example.com") is None


@pytest.mark.parametrize("pattern", ["models.example.com", "{model}.{model}.example.com", "http://{model}.x.com",
                                     "{model}.x.com:8000", "{model}.x.com/path", "{name}.x.com"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="--host-routing"):
        HostRouting(pattern)


@pytest.mark.parametrize(("path", "split"), [
    ("/serving/default/mlp/v2/models/mlp/infer", ("mlp", "/v2/models/mlp/infer")),
    ("/serving/ns/mlp/v1/models/mlp:predict", ("mlp", "/v1/models/mlp:predict")),
    ("/serving/ns/mlp/v2/infer", ("mlp", "/v2/infer")),
    ("/serving/ns/mlp/", None),
    ("/serving/ns/mlp", None),
    ("/serving//mlp/v2", None),
    ("/serving/ns//v2", None),
])
def test_serving_prefix(path: str, split: tuple[str, str] | None) -> None:
    assert split_serving_path(path) == split


def test_one_request_one_model() -> None:
    assert routed_model("", "mlp", "host") == "mlp"
    assert routed_model("mlp", "mlp", "host") == "mlp"
    with pytest.raises(InferError) as caught:
        routed_model("simple", "mlp", "host 'mlp.models.example.com'")
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "'simple'" in caught.value.message and "'mlp'" in caught.value.message
    assert "host 'mlp.models.example.com'" in caught.value.message
