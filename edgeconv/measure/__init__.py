"""Measuring artifacts: `validate` (ONNX against its PyTorch source, JUnit XML), `bench` (accuracy + latency per
model x backend x precision x batch), `profile` (per-operator time), `results` and `tables` (what they write) and
`describe` (`edgeconv info`)."""
