"""CUDA kernels for rwkv::WKV4: the CUDA source, its NVRTC build to PTX, and a cuda-python launcher.

`wkv4.cu` holds the kernels; `nvrtc` compiles them to PTX (no GPU needed); `launcher` runs the PTX
through the CUDA driver API from raw pointers or torch tensors; `torch_cuda` exposes them as the
torch custom op `rwkv_export::wkv4`. Importing this package imports nothing from CUDA.
"""
