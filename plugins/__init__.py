"""CUDA kernels for the rwkv:: WKV ops, their NVRTC builds, launchers and TensorRT plugin fronts.

`wkv4.cu` (WKV4) and `wkv_matrix.cu` (WKV5/6/7) hold the kernels, sharing `wkv_common.cuh`;
`nvrtc` compiles them to PTX/SASS (no GPU needed); `launcher` and `matrix_launcher` run them through
the CUDA driver API from raw pointers or torch tensors; `torch_cuda` exposes them as the torch
custom ops `rwkv_export::wkv4` .. `wkv7`; `plugin_ops`, `trt_plugin`, `trt_aot` and
`trt_aot_matrix` are the TensorRT fronts. Importing this package imports nothing from CUDA.
"""
