"""Object-store options from arguments and the environment, named as KServe's storage initializer names them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["S3Settings", "fsspec_options"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class S3Settings:
    """The S3 settings KServe's storage initializer exposes; each None means "the SDK's default".

    Credentials are not among them: the SDK finds those by itself (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
    `AWS_PROFILE`, `~/.aws/credentials`, instance roles).
    """

    endpoint_url: str | None = None
    use_https: bool | None = None
    region: str | None = None
    anonymous: bool | None = None
    verify_ssl: bool | None = None

    @classmethod
    def resolve(cls, endpoint_url: str | None = None, use_https: bool | None = None, region: str | None = None,
                anonymous: bool | None = None, verify_ssl: bool | None = None) -> S3Settings:
        """Arguments first, then the environment.

        Endpoint: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `S3_ENDPOINT`; `S3_USE_HTTPS`; region: `AWS_REGION`,
        `AWS_DEFAULT_REGION`; anonymous access: `AWS_ANONYMOUS`, KServe's `awsAnonymousCredential`; `S3_VERIFY_SSL`.
        `S3_ENDPOINT` may be a bare `host:port` as KServe sets it; an endpoint without a scheme gets `https://`, or
        `http://` when HTTPS is off (`S3_USE_HTTPS=0`).
        """
        use_https = use_https if use_https is not None else _env_bool("S3_USE_HTTPS")
        endpoint = endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT")
        if endpoint and "://" not in endpoint:
            endpoint = ("http://" if use_https is False else "https://") + endpoint
        return cls(
            endpoint_url=endpoint,
            use_https=use_https,
            region=region or _env("AWS_REGION", "AWS_DEFAULT_REGION"),
            anonymous=anonymous if anonymous is not None else _env_bool("AWS_ANONYMOUS", "awsAnonymousCredential"),
            verify_ssl=verify_ssl if verify_ssl is not None else _env_bool("S3_VERIFY_SSL"),
        )

    def fsspec_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        client: dict[str, Any] = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.use_https is not None:
            options["use_ssl"] = self.use_https
        if self.region:
            client["region_name"] = self.region
        if self.verify_ssl is False:
            client["verify"] = False
        if self.anonymous:
            options["anon"] = True
        if client:
            options["client_kwargs"] = client
        return options


def fsspec_options(protocol: str, s3: S3Settings) -> dict[str, Any]:
    """The filesystem options inferd adds for a store: the S3 settings, anonymous GCS access (`GCS_ANONYMOUS`)."""
    if protocol == "s3":
        return s3.fsspec_options()
    if protocol == "gcs" and _env_bool("GCS_ANONYMOUS"):
        return {"token": "anon"}
    return {}


def _env_bool(*names: str) -> bool | None:
    for name in names:
        value = os.environ.get(name)
        if value is None or not value.strip():
            continue
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(_TRUE + _FALSE)}")
    return None


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value and value.strip():
            return value.strip()
    return None
