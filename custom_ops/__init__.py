"""The WKV custom ops: schema (single source of truth), reference implementations, ONNX bodies.

Everything that defines what `rwkv::WKV4` .. `rwkv::WKV7` compute lives here, so that the torch reference model,
the ONNX exporter, the CUDA kernels and the TensorRT plugin all check against one definition.
"""

from rwkv_export.ops import wkv5, wkv6, wkv7  # noqa: E402

# The matrix-state ops by op type. Each module holds INPUTS, OUTPUTS, STATE_LAYOUT, the torch
# definition `wkvN` and the float64 oracle `wkvN_numpy`.
MATRIX_OPS = {m.OP_TYPE: m for m in (wkv5, wkv6, wkv7)}
