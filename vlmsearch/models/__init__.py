"""Encoders and what turns them into vectors: open_clip, unimodal towers, ONNX towers, ASIF,
zero-shot prompts.

May import: the bottom modules, storage and imaging."""
