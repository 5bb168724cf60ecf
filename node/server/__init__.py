"""The node's HTTP API: the aiohttp application (``build_app``) and its run loop (``serve``)."""

from node.server.app import build_app, serve

__all__ = ["build_app", "serve"]
