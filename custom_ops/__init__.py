"""The WKV custom ops: schema (single source of truth), reference implementations, ONNX bodies.

Everything that defines what `rwkv::WKV4` .. `rwkv::WKV7` compute lives here, so that the torch reference model,
the ONNX exporter, the CUDA kernels and the TensorRT plugin all check against one definition.
"""
