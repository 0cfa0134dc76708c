// Shared by plugins/wkv4.cu and plugins/wkv_heads.cu: host/device qualifiers, IEEE fp16 <-> fp32
// conversion (inline PTX on the device, exact software rounding on the host) and the IO loaders.
// NVRTC gets this file as a named header (plugins/nvrtc.py); g++ includes it by path. No other
// #include: NVRTC has no CUDA headers here.
#ifndef RWKV_EXPORT_WKV_COMMON_CUH
#define RWKV_EXPORT_WKV_COMMON_CUH

#ifdef __CUDACC__
#define WKV_HD __host__ __device__ __forceinline__
#else
// g++: the CUDA qualifiers vanish and the builtin vector types get plain stand-ins.
#include <cmath>
#include <cstring>
#define WKV_HD inline
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
#endif

typedef unsigned short wkv_half;  // IEEE binary16 bits; no cuda_fp16.h under NVRTC here

// --- fp16 <-> fp32 ------------------------------------------------------------------------------

WKV_HD float wkv_half_to_float(wkv_half h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    unsigned int sign = (unsigned int)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    unsigned int bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);  // normal: rebias 15 -> 127
    } else if (man == 0) {
        bits = sign;  // signed zero
    } else {  // subnormal half: normalise into a float
        int e = -1;
        do { man <<= 1; ++e; } while (!(man & 0x400u));
        bits = sign | ((unsigned int)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

WKV_HD wkv_half wkv_float_to_half(float f) {
#if defined(__CUDA_ARCH__)
    wkv_half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    // Round to nearest even, as cvt.rn does; overflow -> inf, underflow -> subnormal / zero.
    unsigned int x;
    memcpy(&x, &f, 4);
    unsigned int sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (wkv_half)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (wkv_half)(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (ax < 0x38800000u) {                                      // below the smallest normal half
        if (ax < 0x33000000u) return (wkv_half)sign;             // < 2^-25: rounds to zero
        unsigned int e = ax >> 23, man = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;
        unsigned int r = man >> shift, rem = man & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
        return (wkv_half)(sign | r);
    }
    unsigned int r = ax - 0x38000000u;  // rebias 127 -> 15 (still shifted by 13)
    unsigned int rem = r & 0x1fffu, out = r >> 13;
    if (rem > 0x1000u || (rem == 0x1000u && (out & 1u))) ++out;
    return (wkv_half)(sign | out);
#endif
}

template <typename IO> struct WkvIo;
template <> struct WkvIo<float> {
    WKV_HD static float load(const float* p) { return *p; }
    WKV_HD static void store(float* p, float x) { *p = x; }
    WKV_HD static void load4(const float* p, float* out) {  // p is 16-byte aligned
        float4 q = *reinterpret_cast<const float4*>(p);
        out[0] = q.x; out[1] = q.y; out[2] = q.z; out[3] = q.w;
    }
    WKV_HD static void store4(float* p, const float* x) {
        float4 q; q.x = x[0]; q.y = x[1]; q.z = x[2]; q.w = x[3];
        *reinterpret_cast<float4*>(p) = q;
    }
    static const unsigned int kAlign4 = 16;  // bytes of four elements
};
template <> struct WkvIo<wkv_half> {
    WKV_HD static float load(const wkv_half* p) { return wkv_half_to_float(*p); }
    WKV_HD static void store(wkv_half* p, float x) { *p = wkv_float_to_half(x); }
    WKV_HD static void load4(const wkv_half* p, float* out) {  // p is 8-byte aligned
        uint2 q = *reinterpret_cast<const uint2*>(p);
        out[0] = wkv_half_to_float((wkv_half)(q.x & 0xffffu)); out[1] = wkv_half_to_float((wkv_half)(q.x >> 16));
        out[2] = wkv_half_to_float((wkv_half)(q.y & 0xffffu)); out[3] = wkv_half_to_float((wkv_half)(q.y >> 16));
    }
    WKV_HD static void store4(wkv_half* p, const float* x) {
        uint2 q;
        q.x = (unsigned int)wkv_float_to_half(x[0]) | ((unsigned int)wkv_float_to_half(x[1]) << 16);
        q.y = (unsigned int)wkv_float_to_half(x[2]) | ((unsigned int)wkv_float_to_half(x[3]) << 16);
        *reinterpret_cast<uint2*>(p) = q;
    }
    static const unsigned int kAlign4 = 8;
};

#endif  // RWKV_EXPORT_WKV_COMMON_CUH
