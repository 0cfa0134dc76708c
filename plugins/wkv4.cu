// WKV4 kernels for rwkv::WKV4 (see custom_ops/wkv4.py for the op and its float64 reference).
//
// Compiled to PTX by NVRTC (plugins/nvrtc.py) and, with the host shims of wkv_common.cuh, by g++
// for the CPU proof in tests/ (tests/wkv4_host.cpp runs these same bodies over an emulated grid).
// So: no CUDA header (NVRTC has none here; fp16 conversion lives in wkv_common.cuh), and every
// kernel body is a __host__ __device__ function of explicit thread/block indices; the extern "C"
// __global__ wrappers only read the builtins.
//
// Entry points (AOT plugin order: inputs, then int32 scalars, then outputs), IO = f32 | f16:
//   wkv4_seq_IO     (td, tf, k, v, aa, bb, pp, B, T, C, y, aa_out, bb_out, pp_out)
//   wkv4_seq4_IO    (same)   4 channels per thread, vector loads when C % 4 == 0 and aligned
//   wkv4_chunked_IO (same)   block = (channels, chunks of T); in-block parallel scan of chunks
//   wkv4_step_IO    (td, tf, k, v, aa, bb, pp, B, C, y, aa_out, bb_out, pp_out)  one token
// time_decay/time_first [C] and the state aa/bb/pp [B, C] are float32 in every variant; k, v, y
// ([B, T, C], or [B, C] for step) are IO. Math is float32. aa_out may alias aa (likewise bb, pp):
// each state element is read before it is written, by the thread (or block) that writes it.

#include "wkv_common.cuh"

#define WKV_PP_INIT (-1e38f)  // custom_ops.wkv4.PP_INIT: exp(PP_INIT - p) underflows to exactly 0
#define WKV_MAX_THREADS 1024  // largest block; sizes the chunked form's shared arrays (2 x 12 KB)

// --- per-token math (the numerically stable form; state scaled by exp(-pp)) -------------------

struct WkvState {
    float aa, bb, pp;
};

WKV_HD WkvState wkv_identity() {
    WkvState s;
    s.aa = 0.f; s.bb = 0.f; s.pp = WKV_PP_INIT;
    return s;
}

// y_t for the current token, with the bonus u; does not change the state.
WKV_HD float wkv_output(WkvState s, float u, float k, float v) {
    float ww = u + k;
    float p = fmaxf(s.pp, ww);
    float e1 = expf(s.pp - p), e2 = expf(ww - p);
    return (e1 * s.aa + e2 * v) / (e1 * s.bb + e2);
}

// Folds token (k, v) into the state after decaying it by w = exp(time_decay) > 0.
WKV_HD void wkv_update(WkvState& s, float w, float k, float v) {
    float ww = s.pp - w;
    float p = fmaxf(ww, k);
    float e1 = expf(ww - p), e2 = expf(k - p);
    s.aa = e1 * s.aa + e2 * v;
    s.bb = e1 * s.bb + e2;
    s.pp = p;
}

// State after `first`, then `len` more tokens whose own contribution (from the identity) is
// `second`: first decays by len*w (the per-token decays add in log space), then the two sums add
// under a common running max. Associative; the identity is (0, 0, PP_INIT).
WKV_HD WkvState wkv_combine(WkvState first, float w, int len, WkvState second) {
    float q = first.pp - (float)len * w;  // PP_INIT - len*w stays finite: exp(...) -> 0
    float p = fmaxf(q, second.pp);
    float e1 = expf(q - p), e2 = expf(second.pp - p);
    WkvState s;
    s.aa = e1 * first.aa + e2 * second.aa;
    s.bb = e1 * first.bb + e2 * second.bb;
    s.pp = p;
    return s;
}

// --- kernel bodies (explicit indices so the host harness can run them) --------------------------

template <typename IO> struct WkvArgs {
    const float* time_decay;  // [C]
    const float* time_first;  // [C]
    const IO* k;              // [B, T, C]
    const IO* v;              // [B, T, C]
    const float* aa;          // [B, C]
    const float* bb;          // [B, C]
    const float* pp;          // [B, C]
    int B, T, C;
    IO* y;                    // [B, T, C]
    float* aa_out;            // [B, C]
    float* bb_out;            // [B, C]
    float* pp_out;            // [B, C]
};

// One thread streams one (b, c) over all T tokens (RWKV-LM's wkv_cuda form). `i` = b*C + c.
// Tokens of one t are contiguous over c, so a warp's loads are coalesced; the next token's k, v
// are loaded before this token's math so the load latency overlaps the exp chain.
template <typename IO> WKV_HD void wkv_seq_body(const WkvArgs<IO>& a, long long i) {
    if (i >= (long long)a.B * a.C) return;
    const int c = (int)(i % a.C);
    const long long b = i / a.C;
    const float w = expf(a.time_decay[c]), u = a.time_first[c];
    WkvState s;
    s.aa = a.aa[i]; s.bb = a.bb[i]; s.pp = a.pp[i];
    const long long base = b * a.T * a.C + c;
    float kn = 0.f, vn = 0.f;
    if (a.T > 0) { kn = WkvIo<IO>::load(a.k + base); vn = WkvIo<IO>::load(a.v + base); }
    for (int t = 0; t < a.T; ++t) {
        const long long at = base + (long long)t * a.C;
        const float kt = kn, vt = vn;
        if (t + 1 < a.T) { kn = WkvIo<IO>::load(a.k + at + a.C); vn = WkvIo<IO>::load(a.v + at + a.C); }
        WkvIo<IO>::store(a.y + at, wkv_output(s, u, kt, vt));
        wkv_update(s, w, kt, vt);
    }
    a.aa_out[i] = s.aa; a.bb_out[i] = s.bb; a.pp_out[i] = s.pp;
}

// One thread streams four adjacent channels: 4 independent exp chains per thread and one 16-byte
// (f32) or 8-byte (f16) load per tensor per token. `i` = b*ceil(C/4) + c/4. Falls back to scalar
// loads when the row is not vector-aligned (C % 4 != 0, or misaligned base pointers) or at a
// ragged end, so any B, T, C is correct.
template <typename IO> WKV_HD void wkv_seq4_body(const WkvArgs<IO>& a, long long i, bool aligned) {
    const int C4 = (a.C + 3) / 4;
    if (i >= (long long)a.B * C4) return;
    const int c0 = (int)(i % C4) * 4;
    const long long b = i / C4;
    const int n = a.C - c0 < 4 ? a.C - c0 : 4;
    const bool vec = aligned && n == 4;
    float w[4], u[4], kt[4], vt[4], yt[4];
    WkvState s[4];
    for (int j = 0; j < 4; ++j) {
        const int c = j < n ? c0 + j : c0;  // lanes past C repeat channel c0 and store nothing
        w[j] = expf(a.time_decay[c]); u[j] = a.time_first[c];
        const long long si = b * a.C + c;
        s[j].aa = a.aa[si]; s[j].bb = a.bb[si]; s[j].pp = a.pp[si];
    }
    const long long base = b * a.T * a.C + c0;
    for (int t = 0; t < a.T; ++t) {
        const long long at = base + (long long)t * a.C;
        if (vec) {
            WkvIo<IO>::load4(a.k + at, kt);
            WkvIo<IO>::load4(a.v + at, vt);
        } else {
            for (int j = 0; j < 4; ++j) {
                const int jj = j < n ? j : 0;
                kt[j] = WkvIo<IO>::load(a.k + at + jj); vt[j] = WkvIo<IO>::load(a.v + at + jj);
            }
        }
        for (int j = 0; j < 4; ++j) {
            yt[j] = wkv_output(s[j], u[j], kt[j], vt[j]);
            wkv_update(s[j], w[j], kt[j], vt[j]);
        }
        if (vec) {
            WkvIo<IO>::store4(a.y + at, yt);
        } else {
            for (int j = 0; j < n; ++j) WkvIo<IO>::store(a.y + at + j, yt[j]);
        }
    }
    for (int j = 0; j < n; ++j) {
        const long long si = b * a.C + c0 + j;
        a.aa_out[si] = s[j].aa; a.bb_out[si] = s[j].bb; a.pp_out[si] = s[j].pp;
    }
}

// Chunked form: block = (cw channels) x (nch chunks of T), grid = B * ceil(C / cw) blocks.
// Chunk j of a channel covers tokens [j*L, min(T, (j+1)*L)), L = ceil(T / nch) (trailing chunks
// may be empty). Phases, separated by __syncthreads:
//   1 summary: each thread reads the incoming state (registers) and folds its chunk into the
//              identity state -> buf[0] (aa, bb, pp);
//   2 scan:    log2(nch) Hillis-Steele steps over ty (double-buffered): afterwards slot j holds
//              P_j, the state after chunks 0..j from the identity at token 0;
//   3 output:  each thread's entry state is combine(incoming decayed by t0*w, P_{j-1}); it
//              replays its chunk from there, writing y; the last chunk's thread writes the state.
// The incoming state is decayed once by t0*w rather than t0 times by w: fewer roundings of pp.
// Shared slots are indexed ty*cw + tx, at most WKV_MAX_THREADS per array.
struct WkvScanBuf {
    float aa[WKV_MAX_THREADS], bb[WKV_MAX_THREADS], pp[WKV_MAX_THREADS];
};

struct WkvChunkIdx {
    int tx, ty, cw, nch;
    int b, c, t0, t1;  // derived: batch row, channel, token range of this thread's chunk
    bool live;         // c < C (threads past C only take part in barriers)
};

// First token of chunk j (== T for chunks past the end), L = ceil(T / nch).
WKV_HD int wkv_chunk_start(int j, int T, int nch) {
    const long long L = (T + nch - 1) / nch, t = (long long)j * L;
    return (int)(t < T ? t : T);
}

WKV_HD WkvChunkIdx wkv_chunk_idx(int tx, int ty, int cw, int nch, long long block, int T, int C) {
    WkvChunkIdx d;
    d.tx = tx; d.ty = ty; d.cw = cw; d.nch = nch;
    const int cblocks = (C + cw - 1) / cw;
    d.b = (int)(block / cblocks);
    d.c = (int)(block % cblocks) * cw + tx;
    d.live = d.c < C;
    d.t0 = wkv_chunk_start(ty, T, nch);
    d.t1 = wkv_chunk_start(ty + 1, T, nch);
    return d;
}

WKV_HD WkvState wkv_slot_load(const WkvScanBuf& s, int slot) {
    WkvState x;
    x.aa = s.aa[slot]; x.bb = s.bb[slot]; x.pp = s.pp[slot];
    return x;
}

WKV_HD void wkv_slot_store(WkvScanBuf& s, int slot, WkvState x) {
    s.aa[slot] = x.aa; s.bb[slot] = x.bb; s.pp[slot] = x.pp;
}

template <typename IO>
WKV_HD void wkv_chunk_summary(const WkvArgs<IO>& a, const WkvChunkIdx& d, WkvScanBuf& out) {
    if (!d.live) return;
    const float w = expf(a.time_decay[d.c]);
    WkvState s = wkv_identity();
    const long long base = (long long)d.b * a.T * a.C + d.c;
    for (int t = d.t0; t < d.t1; ++t) {
        const long long at = base + (long long)t * a.C;
        wkv_update(s, w, WkvIo<IO>::load(a.k + at), WkvIo<IO>::load(a.v + at));
    }
    wkv_slot_store(out, d.ty * d.cw + d.tx, s);
}

// One scan step: slot ty covers chunks (ty-offset+1 .. ty) in `src`; fold in the `offset`
// chunks before them from slot ty-offset, so `dst` slot ty covers (ty-2*offset+1 .. ty).
template <typename IO>
WKV_HD void wkv_chunk_scan_step(const WkvArgs<IO>& a, const WkvChunkIdx& d, int offset, const WkvScanBuf& src, WkvScanBuf& dst) {
    if (!d.live) return;
    const int slot = d.ty * d.cw + d.tx;
    WkvState s = wkv_slot_load(src, slot);
    if (d.ty >= offset) {
        const int len = d.t1 - wkv_chunk_start(d.ty - offset + 1, a.T, d.nch);  // tokens after `left`
        s = wkv_combine(wkv_slot_load(src, slot - offset * d.cw), expf(a.time_decay[d.c]), len, s);
    }
    wkv_slot_store(dst, slot, s);
}

// The incoming state, read before the first barrier: with aa_out == aa the last chunk's thread
// overwrites it in phase 3 while other chunks of the channel may not have read it yet.
template <typename IO> WKV_HD WkvState wkv_chunk_incoming(const WkvArgs<IO>& a, const WkvChunkIdx& d) {
    if (!d.live) return wkv_identity();
    const long long si = (long long)d.b * a.C + d.c;
    WkvState s;
    s.aa = a.aa[si]; s.bb = a.bb[si]; s.pp = a.pp[si];
    return s;
}

template <typename IO>
WKV_HD void wkv_chunk_output(const WkvArgs<IO>& a, const WkvChunkIdx& d, WkvState s, const WkvScanBuf& prefix) {
    if (!d.live) return;
    const float w = expf(a.time_decay[d.c]), u = a.time_first[d.c];
    const long long si = (long long)d.b * a.C + d.c;
    if (d.ty > 0) s = wkv_combine(s, w, d.t0, wkv_slot_load(prefix, (d.ty - 1) * d.cw + d.tx));
    const long long base = (long long)d.b * a.T * a.C + d.c;
    for (int t = d.t0; t < d.t1; ++t) {
        const long long at = base + (long long)t * a.C;
        const float kt = WkvIo<IO>::load(a.k + at), vt = WkvIo<IO>::load(a.v + at);
        WkvIo<IO>::store(a.y + at, wkv_output(s, u, kt, vt));
        wkv_update(s, w, kt, vt);
    }
    if (d.ty == d.nch - 1) {
        a.aa_out[si] = s.aa; a.bb_out[si] = s.bb; a.pp_out[si] = s.pp;
    }
}

template <typename IO> WKV_HD bool wkv_vec_aligned(const WkvArgs<IO>& a) {
    // Every row start is a multiple of C elements, so C % 4 == 0 plus aligned bases suffices.
    const unsigned long long m = WkvIo<IO>::kAlign4 - 1;
    return (a.C % 4) == 0 && (((unsigned long long)a.k | (unsigned long long)a.v | (unsigned long long)a.y) & m) == 0;
}

// --- extern "C" entry points ------------------------------------------------------------------

#ifdef __CUDACC__

#define WKV_SEQ_PARAMS(IO)                                                                          \
    const float* time_decay, const float* time_first, const IO* __restrict__ k,                   \
        const IO* __restrict__ v, const float* aa, const float* bb, const float* pp, int B, int T, \
        int C, IO* __restrict__ y, float* aa_out, float* bb_out, float* pp_out

#define WKV_ARGS(IO)                                                                              \
    WkvArgs<IO> a = {time_decay, time_first, k, v, aa, bb, pp, B, T, C, y, aa_out, bb_out, pp_out}

#define WKV_GLOBAL_THREAD ((long long)blockIdx.x * blockDim.x + threadIdx.x)

#define WKV_DEFINE(SUFFIX, IO)                                                                    \
    extern "C" __global__ void wkv4_seq_##SUFFIX(WKV_SEQ_PARAMS(IO)) {                           \
        WKV_ARGS(IO);                                                                             \
        wkv_seq_body<IO>(a, WKV_GLOBAL_THREAD);                                                   \
    }                                                                                             \
    extern "C" __global__ void wkv4_seq4_##SUFFIX(WKV_SEQ_PARAMS(IO)) {                          \
        WKV_ARGS(IO);                                                                             \
        wkv_seq4_body<IO>(a, WKV_GLOBAL_THREAD, wkv_vec_aligned<IO>(a));                          \
    }                                                                                             \
    /* launch bounds: a 1024-thread block must fit in 64 registers per thread */                 \
    extern "C" __global__ void __launch_bounds__(WKV_MAX_THREADS)                                \
        wkv4_chunked_##SUFFIX(WKV_SEQ_PARAMS(IO)) {                                               \
        __shared__ WkvScanBuf buf[2];                                                            \
        WKV_ARGS(IO);                                                                             \
        const WkvChunkIdx d = wkv_chunk_idx(threadIdx.x, threadIdx.y, blockDim.x, blockDim.y,     \
                                            blockIdx.x, T, C);                                    \
        if (d.b >= B) return; /* whole block: no barrier is split */                              \
        const WkvState incoming = wkv_chunk_incoming<IO>(a, d);                                   \
        wkv_chunk_summary<IO>(a, d, buf[0]);                                                      \
        __syncthreads();                                                                          \
        int cur = 0;                                                                              \
        for (int offset = 1; offset < (int)blockDim.y; offset <<= 1) {                            \
            wkv_chunk_scan_step<IO>(a, d, offset, buf[cur], buf[cur ^ 1]);                        \
            __syncthreads();                                                                      \
            cur ^= 1;                                                                             \
        }                                                                                         \
        wkv_chunk_output<IO>(a, d, incoming, buf[cur]);                                           \
    }                                                                                             \
    extern "C" __global__ void wkv4_step_##SUFFIX(                                               \
        const float* time_decay, const float* time_first, const IO* __restrict__ k,               \
        const IO* __restrict__ v, const float* aa, const float* bb, const float* pp, int B,       \
        int C, IO* __restrict__ y, float* aa_out, float* bb_out, float* pp_out) {                 \
        const int T = 1; /* k, v, y are [B, C]: the [B, 1, C] layout of one token */              \
        WKV_ARGS(IO);                                                                             \
        wkv_seq_body<IO>(a, WKV_GLOBAL_THREAD);                                                   \
    }

WKV_DEFINE(f32, float)
WKV_DEFINE(f16, wkv_half)

#endif  // __CUDACC__
