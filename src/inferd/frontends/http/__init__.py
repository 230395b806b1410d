"""HTTP front door: the V2 REST protocol (with Triton's extensions) as a raw ASGI application."""

from .app import HttpFrontend

__all__ = ["HttpFrontend"]
