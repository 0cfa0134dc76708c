"""Serving: state files bound to their export, and a Triton Inference Server model repository.

    manifest_view.py  the few manifest facts serving reads (one small function each)
    state_file.py     save / load / select / join recurrent states (`rwkv-export-state/1` .npz)
    triton.py         `rwkv-export triton DIR -o REPO`: config.pbtxt files and model files

Serving reads exported directories only (manifest + graph files); it does not import the runtime.
"""
