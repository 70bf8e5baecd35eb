"""The ``localllm`` command: a thin client over the daemon, plus ``serve``."""
