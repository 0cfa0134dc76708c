// WKV5, WKV6 and WKV7 kernels for rwkv::WKV5/6/7 (custom_ops/wkv5.py, wkv6.py, wkv7.py define the
// ops and their float64 references). Built like wkv4.cu: NVRTC to PTX/SASS (plugins/nvrtc.py, unit
// "wkv_heads"), and g++ for the CPU proof (tests/wkv_heads_host.cpp runs these bodies over an
// emulated block, phase by phase between the barriers).
//
// One block per (batch row b, head h), N threads (N = head size, a template parameter: the state
// lives in registers). Thread n owns one line of the head's N x N state:
//   WKV5/6, key-major S[i=key][j=value]: thread j owns column j. Per token
//       y_j = sum_i r_i (u_i k_i v_j + S_ij);   S_ij <- w_i S_ij + k_i v_j
//   WKV7, value-major S[i=value][j=key]: thread i owns row i. Per token
//       sa_i = sum_j S_ij a_j;  S_ij <- S_ij w_j + sa_i b_j + v_i k_j;  y_i = sum_j S_ij r_j
// with w = exp(-exp(w_raw)) in float32. The per-token vectors every thread reads (r, k, w, and a, b
// for WKV7) go through shared memory, double-buffered: token t+1 is loaded into registers before
// token t's math and stored after it, so one barrier per token suffices (a thread writes buffer
// (t+1)&1 only after the barrier that every thread reached having finished reading it at t-1).
//
// Entry points (AOT plugin order: inputs, int32 scalars, outputs), N in {8,16,32,64,128}, IO f32|f16:
//   wkv5_nN_IO (r, k, v, w_raw[H,N], u[H,N], state_in, B, T, H, y, state_out)
//   wkv6_nN_IO (r, k, v, w_raw[B,T,H,N], u[H,N], state_in, B, T, H, y, state_out)
//   wkv7_nN_IO (r, w_raw[B,T,H,N], k, v, a, b, state_in, B, T, H, y, state_out)
// r, k, v, a, b are [B, T, H, N] in IO; w_raw, u, the state [B, H, N, N] and y [B, T, H, N] are
// float32 (the ops' contract: float16 inputs are read as float32, outputs stay float32).
// state_out may alias state_in: each thread reads its line before the first token and writes it
// after the last. T == 0 copies the state. grid.x = B*H, block.x = N.

#include "wkv_common.cuh"

#define WKV5 5
#define WKV6 6
#define WKV7 7

template <typename IO> struct MatArgs {
    const IO* r;
    const IO* k;
    const IO* v;
    const IO* a;             // WKV7 only (else null)
    const IO* b;             // WKV7 only
    const float* w_raw;      // WKV5: [H, N]; WKV6/7: [B, T, H, N]
    const float* u;          // WKV5/6: [H, N]; WKV7: null
    const float* state_in;   // [B, H, N, N]
    int B, T, H;
    float* y;                // [B, T, H, N]
    float* state_out;        // [B, H, N, N]
};

// The per-token vectors of one head, as every thread of the block reads them.
template <int N> struct MatToken {
    float r[N], k[N], w[N], a[N], b[N];
};

// What one thread loads of one token (its element n of each vector) and its own v.
struct MatLoad {
    float r, k, w, a, b, v;
};

// One thread's registers: its line of the state, the head's constants, the current token's v.
template <int N> struct MatThread {
    float s[N];
    float v;
};

WKV_HD float mat_decay(float w_raw) { return expf(-expf(w_raw)); }

// Offset of element n of token t for block bh = b*H + h in a [B, T, H, N] tensor.
template <int N> WKV_HD long long mat_at(int T, int H, int bh, int t, int n) {
    const long long b = bh / H, h = bh % H;
    return ((b * T + t) * H + h) * N + n;
}

template <int OP, int N, typename IO> WKV_HD MatLoad mat_load(const MatArgs<IO>& a, int bh, int t, int n) {
    const long long at = mat_at<N>(a.T, a.H, bh, t, n);
    MatLoad l;
    l.r = WkvIo<IO>::load(a.r + at);
    l.k = WkvIo<IO>::load(a.k + at);
    l.v = WkvIo<IO>::load(a.v + at);
    l.w = OP == WKV5 ? 0.f : mat_decay(a.w_raw[at]);  // WKV5's decay is per head: staged once
    l.a = OP == WKV7 ? WkvIo<IO>::load(a.a + at) : 0.f;
    l.b = OP == WKV7 ? WkvIo<IO>::load(a.b + at) : 0.f;
    return l;
}

template <int OP, int N> WKV_HD void mat_store(MatToken<N>& tok, const MatLoad& l, int n) {
    tok.r[n] = l.r;
    tok.k[n] = l.k;
    if (OP != WKV5) tok.w[n] = l.w;
    if (OP == WKV7) { tok.a[n] = l.a; tok.b[n] = l.b; }
}

// Phase 0 (before the first barrier): read this thread's state line, stage the head's constants
// (u, and WKV5's decay, into both buffers' slots), load and stage token 0.
// WKV7 threads own rows, and a warp reading 32 rows element by element touches 32 cache lines per
// load (measured 3x slower decode steps than WKV5/6 at batch 16). So for N <= 64 the state passes
// through a padded shared tile: read and written row-wise by all threads together (coalesced),
// moved between tile and registers line-wise (no bank conflicts with the +1 padding). WKV5/6
// columns are already coalesced, and N = 128 would need a 66 KB tile: those read global directly.
template <int OP, int N> struct MatTiled {
    static const bool value = OP == WKV7 && N <= 64;
};
template <int N> struct MatTile {
    float s[N][N + 1];
};

// Phase -1 (before the first barrier): the tiled ops copy the head's state into the tile, row m's
// element n by thread n.
template <int OP, int N, typename IO> WKV_HD void mat_tile_in(const MatArgs<IO>& a, int bh, int n, MatTile<N>& tile) {
    if (!MatTiled<OP, N>::value) return;
    const long long base = (long long)bh * N * N;
    for (int m = 0; m < N; ++m) tile.s[m][n] = a.state_in[base + (long long)m * N + n];
}

// After the last phase and a barrier: the tile back to state_out, row-wise.
template <int OP, int N, typename IO> WKV_HD void mat_tile_out(const MatArgs<IO>& a, int bh, int n, const MatTile<N>& tile) {
    if (!MatTiled<OP, N>::value) return;
    const long long base = (long long)bh * N * N;
    for (int m = 0; m < N; ++m) a.state_out[base + (long long)m * N + n] = tile.s[m][n];
}

template <int OP, int N, typename IO>
WKV_HD void mat_begin(const MatArgs<IO>& a, int bh, int n, MatThread<N>& th, MatToken<N>* buf, float* u, const MatTile<N>& tile) {
    const long long base = (long long)bh * N * N;
    for (int m = 0; m < N; ++m)  // WKV5/6: column n (S[m][n]); WKV7: row n (S[n][m])
        th.s[m] = MatTiled<OP, N>::value ? tile.s[n][m]
                  : OP == WKV7           ? a.state_in[base + (long long)n * N + m]
                                         : a.state_in[base + (long long)m * N + n];
    const int h = bh % a.H;
    if (OP != WKV7) u[n] = a.u[h * N + n];
    if (OP == WKV5) buf[0].w[n] = buf[1].w[n] = mat_decay(a.w_raw[h * N + n]);
    th.v = 0.f;
    if (a.T > 0) {
        const MatLoad l = mat_load<OP, N, IO>(a, bh, 0, n);
        mat_store<OP, N>(buf[0], l, n);
        th.v = l.v;
    }
}

// Token t's math for thread n, reading the staged vectors; returns y.
template <int OP, int N> WKV_HD float mat_token(const MatToken<N>& tok, const float* u, MatThread<N>& th) {
    float y = 0.f;
    if (OP == WKV7) {
        float sa = 0.f;
        for (int j = 0; j < N; ++j) sa += th.s[j] * tok.a[j];
        for (int j = 0; j < N; ++j) {
            th.s[j] = th.s[j] * tok.w[j] + sa * tok.b[j] + th.v * tok.k[j];
            y += th.s[j] * tok.r[j];
        }
    } else {
        for (int i = 0; i < N; ++i) {
            const float kv = tok.k[i] * th.v;
            y += tok.r[i] * (u[i] * kv + th.s[i]);
            th.s[i] = th.s[i] * tok.w[i] + kv;
        }
    }
    return y;
}

// Phase t+1 (between barriers t and t+1): load token t+1, compute token t, stage token t+1.
template <int OP, int N, typename IO>
WKV_HD void mat_phase(const MatArgs<IO>& a, int bh, int n, int t, MatThread<N>& th, MatToken<N>* buf, const float* u) {
    const bool more = t + 1 < a.T;
    MatLoad next = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (more) next = mat_load<OP, N, IO>(a, bh, t + 1, n);
    a.y[mat_at<N>(a.T, a.H, bh, t, n)] = mat_token<OP, N>(buf[t & 1], u, th);
    if (more) {
        mat_store<OP, N>(buf[(t + 1) & 1], next, n);
        th.v = next.v;
    }
}

// After the last phase: this thread's line to state_out (or to the tile, which mat_tile_out then
// writes after a barrier).
template <int OP, int N, typename IO>
WKV_HD void mat_end(const MatArgs<IO>& a, int bh, int n, const MatThread<N>& th, MatTile<N>& tile) {
    const long long base = (long long)bh * N * N;
    for (int m = 0; m < N; ++m) {
        if (MatTiled<OP, N>::value) tile.s[n][m] = th.s[m];
        else if (OP == WKV7) a.state_out[base + (long long)n * N + m] = th.s[m];
        else a.state_out[base + (long long)m * N + n] = th.s[m];
    }
}

// --- extern "C" entry points ------------------------------------------------------------------

#ifdef __CUDACC__

template <int OP, int N, typename IO> __device__ __forceinline__ void mat_kernel(const MatArgs<IO>& a) {
    __shared__ MatToken<N> buf[2];
    __shared__ float u[N];
    __shared__ MatTile<MatTiled<OP, N>::value ? N : 1> tile_store;  // 1x2 floats where unused
    MatTile<N>& tile = *reinterpret_cast<MatTile<N>*>(&tile_store);  // only touched when tiled
    const int bh = blockIdx.x, n = threadIdx.x;
    if (bh >= a.B * a.H || n >= N) return;  // whole blocks only: no barrier is split
    MatThread<N> th;
    if (MatTiled<OP, N>::value) {
        mat_tile_in<OP, N, IO>(a, bh, n, tile);
        __syncthreads();
    }
    mat_begin<OP, N, IO>(a, bh, n, th, buf, u, tile);
    __syncthreads();
    for (int t = 0; t < a.T; ++t) {
        mat_phase<OP, N, IO>(a, bh, n, t, th, buf, u);
        __syncthreads();
    }
    mat_end<OP, N, IO>(a, bh, n, th, tile);
    if (MatTiled<OP, N>::value) {
        __syncthreads();
        mat_tile_out<OP, N, IO>(a, bh, n, tile);
    }
}

#define HEADS_DEFINE_KV(OPN, OP, N, SUFFIX, IO)                                                        \
    extern "C" __global__ void __launch_bounds__(N) OPN##_n##N##_##SUFFIX(                       \
        const IO* __restrict__ r, const IO* __restrict__ k, const IO* __restrict__ v,             \
        const float* __restrict__ w_raw, const float* __restrict__ u, const float* state_in,      \
        int B, int T, int H, float* __restrict__ y, float* state_out) {                           \
        MatArgs<IO> a = {r, k, v, 0, 0, w_raw, u, state_in, B, T, H, y, state_out};               \
        mat_kernel<OP, N, IO>(a);                                                                 \
    }

#define HEADS_DEFINE_DELTA(N, SUFFIX, IO)                                                                \
    extern "C" __global__ void __launch_bounds__(N) wkv7_n##N##_##SUFFIX(                        \
        const IO* __restrict__ r, const float* __restrict__ w_raw, const IO* __restrict__ k,      \
        const IO* __restrict__ v, const IO* __restrict__ a_in, const IO* __restrict__ b_in,       \
        const float* state_in, int B, int T, int H, float* __restrict__ y, float* state_out) {    \
        MatArgs<IO> a = {r, k, v, a_in, b_in, w_raw, 0, state_in, B, T, H, y, state_out};         \
        mat_kernel<WKV7, N, IO>(a);                                                               \
    }

#define HEADS_DEFINE_N(N)                                                                            \
    HEADS_DEFINE_KV(wkv5, WKV5, N, f32, float)                                                     \
    HEADS_DEFINE_KV(wkv5, WKV5, N, f16, wkv_half)                                                  \
    HEADS_DEFINE_KV(wkv6, WKV6, N, f32, float)                                                     \
    HEADS_DEFINE_KV(wkv6, WKV6, N, f16, wkv_half)                                                  \
    HEADS_DEFINE_DELTA(N, f32, float)                                                                   \
    HEADS_DEFINE_DELTA(N, f16, wkv_half)

HEADS_DEFINE_N(8)
HEADS_DEFINE_N(16)
HEADS_DEFINE_N(32)
HEADS_DEFINE_N(64)
HEADS_DEFINE_N(128)

#endif  // __CUDACC__
