"""Deployment: ONNX export with verification, int8 quantisation, prediction on image files, benchmarks, HTTP serving."""
