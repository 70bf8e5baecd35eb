"""localllm: a self-hosted local AI runner."""

__version__ = "0.1.0"
