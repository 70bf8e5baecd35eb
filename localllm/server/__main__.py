"""``python -m localllm.server``: run the daemon (what ``localllm serve`` starts)."""

from .app import serve

if __name__ == "__main__":
    serve()
