"""rwkv-export: RWKV checkpoints -> reference model -> ONNX graphs -> runtimes -> parity reports.

Stages, each calling only the ones before it:
    checkpoint  load any on-disk format -> (config, weights)
    model       the torch reference, sequence and step forms sharing one state contract
    export      prefill / step ONNX graphs with the rwkv::WKV4 .. WKV7 custom ops, manifest.json
    runtime     ONNX Runtime (and TensorRT) runners driven by the manifest
    parity      compare backends against the float64 reference, report
"""

__version__ = "0.1.0"
