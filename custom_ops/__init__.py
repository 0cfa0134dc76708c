"""The WKV custom ops: schema (single source of truth), reference implementations, ONNX bodies.

Everything that defines what `rwkv::WKV4` .. `rwkv::WKV7` compute lives here, so that the torch
reference model, the ONNX exporter, the CUDA kernels and the TensorRT plugins all check against one
definition. `registry.OPS` holds one entry per op (schema, references, ONNX bodies, kernels,
TensorRT rules); `wkvN.py` define the ops, `wkvN_onnx.py` write them in standard ONNX ops and
`onnx_function.py` turns those into the model-local functions the exporter ships.
"""
