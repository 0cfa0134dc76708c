"""Serving: state files bound to their export, and a Triton Inference Server model repository.

    state_file.py     save / load / select / join recurrent states (`rwkv-export-state/1` .npz)
    triton.py         `rwkv-export triton DIR -o REPO`: config.pbtxt files and model files
    onnx_wrap.py      an exported graph with batch-first state and Triton's control inputs

Serving reads exported directories only, through the typed manifest (`rwkv_export.manifest.Manifest`:
state specs, graphs, engines, initial state, fingerprint); it does not import the runtime.
"""
