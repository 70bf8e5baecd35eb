"""A streaming, low-RAM Stable Diffusion engine after OnnxStream: a library of numpy, ONNX graphs and weights
providers. It knows nothing of HTTP, the store or the daemon; ``localllm.images`` serves it."""
