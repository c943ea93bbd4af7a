"""Running artifacts: one runner per backend (`backends/`: PyTorch, onnxruntime, TFLite, TensorRT), the sessions and
interpreters they open (`onnxrt`, `tflite`, `tensorrt`, `tflite_profile`), the host CPU's INT8 class (`hostcpu`),
device descriptions and Jetson telemetry (`devices`, `tegrastats`) and running on a remote device over SSH
(`remote`). Below export and quantize, which run what they write here; measuring lives in `measure/`."""
