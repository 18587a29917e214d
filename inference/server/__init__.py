"""An OpenAI-compatible HTTP server with continuous batching (engine.py: the scheduler; app.py: the API)."""

from inference.server.app import Server, create_app
from inference.server.engine import Engine, EngineOverloaded, SeqSpec

__all__ = ["Engine", "EngineOverloaded", "SeqSpec", "Server", "create_app"]
