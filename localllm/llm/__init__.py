"""Running models: templates, prompts, tool calls, the llama.cpp runner and its scheduler."""
