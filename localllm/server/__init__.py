"""The HTTP daemon: the Ollama-style native API (and later the OpenAI one) on one port."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
