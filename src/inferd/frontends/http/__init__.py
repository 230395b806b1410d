"""HTTP front door: the V2 REST protocol (with Triton's extensions) as a raw ASGI application."""

from .app import HttpFrontend
from .server import HttpServer

__all__ = ["HttpFrontend", "HttpServer"]
