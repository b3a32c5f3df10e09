"""The inference service (``slipway serve``): champion and challenger from the MLflow registry,
served with onnxruntime, every answer logged before it is sent, API keys, feedback, metrics."""
