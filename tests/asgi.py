"""Serve an ASGI app with uvicorn on a free local port for the length of a test (the receiver's
own background server, app.receiver.serving)."""

from app.receiver import serving as served

__all__ = ["served"]
