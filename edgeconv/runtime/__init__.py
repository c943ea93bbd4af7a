"""Running and measuring artifacts: backends (PyTorch, onnxruntime, TFLite, TensorRT), device descriptions,
Jetson telemetry, the `bench` measurement loop, its reports, and running it on a remote device over SSH."""
