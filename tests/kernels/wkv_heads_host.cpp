// CPU harness for plugins/wkv_heads.cu: runs the kernels' own __host__ __device__ phases over an
// emulated grid (block bh = b*H + h, N threads), every thread through one phase before any thread
// starts the next, which is what the kernel's barriers guarantee. Driven by
// tests/kernels/test_kernels_cpu.py.
//
//   wkv_heads_host OP N IO B T H FLAGS IN OUT
//     OP 5|6|7, N 8|16|32|64|128, IO f32|f16. FLAGS bit 2: state in place (state_out == state_in)
//     and threads run in reverse order within each phase (any order is legal between barriers).
//     IN holds the op's inputs in its order (custom_ops/wkv{5,6,7}.py INPUTS): r k v (IO) w_raw u
//     (f32) state (f32) for 5/6 (w_raw [H, N] for 5, [B, T, H, N] for 6); r (IO) w_raw (f32) k v a b
//     (IO) state (f32) for 7. OUT gets y [B, T, H, N] then state [B, H, N, N], float32.
// Exit status 0 on success, 2 on bad usage or I/O.

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../../plugins/wkv_heads.cu"

template <typename T> static bool read_n(FILE* f, std::vector<T>& dst, size_t n) {
    dst.resize(n);
    return fread(dst.data(), sizeof(T), n, f) == n;
}

template <int OP, int N, typename IO>
static int run(int B, int T, int H, int flags, const char* in, const char* out) {
    const bool inplace = flags & 2;
    const size_t n_seq = (size_t)B * T * H * N, n_state = (size_t)B * H * N * N;
    const size_t n_w = OP == WKV5 ? (size_t)H * N : n_seq;
    std::vector<IO> r, k, v, av, bv;
    std::vector<float> w_raw, u, state, state_o(n_state), y(n_seq);
    FILE* fi = fopen(in, "rb");
    if (!fi) return 2;
    bool ok;
    if (OP == WKV7) {
        ok = read_n(fi, r, n_seq) && read_n(fi, w_raw, n_w) && read_n(fi, k, n_seq) && read_n(fi, v, n_seq) &&
             read_n(fi, av, n_seq) && read_n(fi, bv, n_seq) && read_n(fi, state, n_state);
    } else {
        ok = read_n(fi, r, n_seq) && read_n(fi, k, n_seq) && read_n(fi, v, n_seq) && read_n(fi, w_raw, n_w) &&
             read_n(fi, u, (size_t)H * N) && read_n(fi, state, n_state);
    }
    fclose(fi);
    if (!ok) return 2;
    float* st_out = inplace ? state.data() : state_o.data();
    MatArgs<IO> a = {r.data(), k.data(), v.data(), OP == WKV7 ? av.data() : nullptr, OP == WKV7 ? bv.data() : nullptr,
                     w_raw.data(), OP == WKV7 ? nullptr : u.data(), state.data(), B, T, H, y.data(), st_out};

    std::vector<MatThread<N>> th(N);
    std::vector<MatTile<N>> tile(1);  // heap: 16 KB at N = 64
    for (int bh = 0; bh < B * H; ++bh) {
        MatToken<N> buf[2];
        float ush[N];
        for (int i = 0; i < N; ++i) mat_tile_in<OP, N, IO>(a, bh, inplace ? N - 1 - i : i, tile[0]);
        for (int i = 0; i < N; ++i) {
            const int n = inplace ? N - 1 - i : i;
            mat_begin<OP, N, IO>(a, bh, n, th[n], buf, ush, tile[0]);
        }
        for (int t = 0; t < T; ++t)
            for (int i = 0; i < N; ++i) {
                const int n = inplace ? N - 1 - i : i;
                mat_phase<OP, N, IO>(a, bh, n, t, th[n], buf, ush);
            }
        for (int i = 0; i < N; ++i) {
            const int n = inplace ? N - 1 - i : i;
            mat_end<OP, N, IO>(a, bh, n, th[n], tile[0]);
        }
        for (int i = 0; i < N; ++i) mat_tile_out<OP, N, IO>(a, bh, inplace ? N - 1 - i : i, tile[0]);
    }
    FILE* fo = fopen(out, "wb");
    if (!fo) return 2;
    ok = fwrite(y.data(), sizeof(float), n_seq, fo) == n_seq && fwrite(st_out, sizeof(float), n_state, fo) == n_state;
    fclose(fo);
    return ok ? 0 : 2;
}

template <int OP, typename IO> static int run_n(int N, int B, int T, int H, int flags, const char* in, const char* out) {
    switch (N) {
        case 8: return run<OP, 8, IO>(B, T, H, flags, in, out);
        case 16: return run<OP, 16, IO>(B, T, H, flags, in, out);
        case 32: return run<OP, 32, IO>(B, T, H, flags, in, out);
        case 64: return run<OP, 64, IO>(B, T, H, flags, in, out);
        case 128: return run<OP, 128, IO>(B, T, H, flags, in, out);
        default: return 2;
    }
}

template <typename IO> static int run_op(int op, int N, int B, int T, int H, int flags, const char* in, const char* out) {
    if (op == 5) return run_n<WKV5, IO>(N, B, T, H, flags, in, out);
    if (op == 6) return run_n<WKV6, IO>(N, B, T, H, flags, in, out);
    if (op == 7) return run_n<WKV7, IO>(N, B, T, H, flags, in, out);
    return 2;
}

int main(int argc, char** argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: wkv_heads_host OP N IO B T H FLAGS IN OUT\n");
        return 2;
    }
    const int op = atoi(argv[1]), N = atoi(argv[2]), B = atoi(argv[4]), T = atoi(argv[5]), H = atoi(argv[6]);
    const int flags = atoi(argv[7]);
    const std::string io = argv[3];
    if (io == "f32") return run_op<float>(op, N, B, T, H, flags, argv[8], argv[9]);
    if (io == "f16") return run_op<wkv_half>(op, N, B, T, H, flags, argv[8], argv[9]);
    return 2;
}
