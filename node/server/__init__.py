"""The node's HTTP API: the aiohttp application (``node.server.app.build_app``) and its run loop
(``node.server.app.serve``); routes, auth, metrics and caching live beside them.

Nothing is imported here, so that modules the app imports (push, federation) may import
``node.server.routes`` without a cycle.
"""
