"""``vlmsearch serve``: an HTTP API and a web page over one or more collections.

Nothing here is imported by the CLI until ``serve`` runs, so FastAPI and uvicorn stay off
the import path of every other command. :func:`vlmsearch.server.app.create_app` builds
the ASGI app; :class:`vlmsearch.server.config.ServerConfig` says what it serves and how.
"""
