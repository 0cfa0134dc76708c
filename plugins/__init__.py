"""CUDA kernels for the rwkv:: WKV ops, their NVRTC builds, launchers and TensorRT plugin fronts.

`wkv4.cu` (WKV4, per-channel state) and `wkv_heads.cu` (WKV5/6/7, per-head state) hold the kernels,
sharing `wkv_common.cuh`; `nvrtc` compiles them to PTX/SASS (no GPU needed); `launcher` plans and
runs any op's kernels through the CUDA driver API (`cuda_driver`) from raw pointers or torch
tensors; `torch_cuda` exposes them as the torch custom ops `rwkv_export::wkv4` .. `wkv7`;
`trt_plugin` (class-based IPluginV3) and `trt_aot` (decorator/AOT) are the two TensorRT fronts;
`trt_compat` imports TensorRT or TensorRT-RTX. Every module iterates over the op registry
(rwkv_export.ops.registry). Importing this package imports nothing from CUDA.
"""
