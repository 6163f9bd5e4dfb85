"""Torch-free towers: an encoder tower exported once to ONNX and run by onnxruntime."""
