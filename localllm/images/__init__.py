"""Serving image models: request parameters, the model folders in the store, pulls of diffusers ONNX
repositories, and the service that runs the diffusion engine in a worker process."""
