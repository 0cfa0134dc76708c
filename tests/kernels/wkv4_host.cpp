// CPU harness for plugins/wkv4.cu: runs the kernels' own __host__ __device__ bodies over an
// emulated grid (same geometry the launcher would pick), so g++ proves the math, the chunk
// scan and the indexing without a GPU. Driven by tests/kernels/test_kernels_cpu.py.
//
//   wkv4_host FORM IO B T C BLOCK_X BLOCK_Y GRID_X FLAGS IN OUT
//     FORM seq|seq4|chunked|step, IO f32|f16. FLAGS bit 1: offset k, v, y by one element (seq4
//     takes its scalar path); bit 2: state in place (aa_out == aa, ...) and threads run in
//     reverse order within each phase (any order is legal between barriers; this one exposes a
//     read of the incoming state after the last chunk has overwritten it). IN holds td[C] tf[C] (f32), k v [B*T*C] (IO), aa bb pp [B*C]
//     (f32); OUT gets y [B*T*C] (IO), aa bb pp [B*C] (f32). Step reads T as 1.
//   wkv4_host cvt N IN OUT
//     IN holds N float32; OUT gets N fp16 bit patterns then their N float32 round trips.
// Exit status 0 on success, 2 on bad usage or I/O.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../plugins/wkv4.cu"

template <typename T> static bool read_n(FILE* f, T* dst, size_t n) { return fread(dst, sizeof(T), n, f) == n; }
template <typename T> static bool write_n(FILE* f, const T* src, size_t n) { return fwrite(src, sizeof(T), n, f) == n; }

static int run_cvt(long n, const char* in, const char* out) {
    std::vector<float> x(n), back(n);
    std::vector<wkv_half> h(n);
    FILE* fi = fopen(in, "rb");
    if (!fi || !read_n(fi, x.data(), n)) return 2;
    fclose(fi);
    for (long i = 0; i < n; ++i) { h[i] = wkv_float_to_half(x[i]); back[i] = wkv_half_to_float(h[i]); }
    FILE* fo = fopen(out, "wb");
    if (!fo || !write_n(fo, h.data(), n) || !write_n(fo, back.data(), n)) return 2;
    fclose(fo);
    return 0;
}

template <typename IO>
static int run(const std::string& form, int B, int T, int C, int bx, int by, long gx, int flags,
               const char* in, const char* out) {
    const bool misalign = flags & 1, inplace = flags & 2;
    const int Tk = form == "step" ? 1 : T;
    const size_t n_seq = (size_t)B * Tk * C, n_state = (size_t)B * C, off = misalign ? 1 : 0;
    std::vector<float> td(C), tf(C), aa(n_state), bb(n_state), pp(n_state), aa_o(n_state), bb_o(n_state), pp_o(n_state);
    std::vector<IO> k(n_seq + off), v(n_seq + off), y(n_seq + off);
    FILE* fi = fopen(in, "rb");
    if (!fi) return 2;
    bool ok = read_n(fi, td.data(), C) && read_n(fi, tf.data(), C) && read_n(fi, k.data() + off, n_seq) &&
              read_n(fi, v.data() + off, n_seq) && read_n(fi, aa.data(), n_state) &&
              read_n(fi, bb.data(), n_state) && read_n(fi, pp.data(), n_state);
    fclose(fi);
    if (!ok) return 2;
    float *aa_w = inplace ? aa.data() : aa_o.data(), *bb_w = inplace ? bb.data() : bb_o.data(),
          *pp_w = inplace ? pp.data() : pp_o.data();
    WkvArgs<IO> a = {td.data(), tf.data(), k.data() + off, v.data() + off, aa.data(), bb.data(), pp.data(),
                     B, Tk, C, y.data() + off, aa_w, bb_w, pp_w};

    if (form == "seq" || form == "step") {
        for (long blk = 0; blk < gx; ++blk)
            for (int tx = 0; tx < bx; ++tx) wkv_seq_body<IO>(a, blk * bx + tx);
    } else if (form == "seq4") {
        const bool aligned = wkv_vec_aligned<IO>(a);
        for (long blk = 0; blk < gx; ++blk)
            for (int tx = 0; tx < bx; ++tx) wkv_seq4_body<IO>(a, blk * bx + tx, aligned);
    } else if (form == "chunked") {
        if (bx * by > WKV_MAX_THREADS) return 2;
        std::vector<WkvScanBuf> buf(2);  // the kernel's __shared__ buf[2]
        for (long blk = 0; blk < gx; ++blk) {
            // One phase for every thread of the block, then the next: what __syncthreads orders.
            std::vector<WkvChunkIdx> idx;
            for (int ty = 0; ty < by; ++ty)
                for (int tx = 0; tx < bx; ++tx) idx.push_back(wkv_chunk_idx(tx, ty, bx, by, blk, Tk, C));
            if (inplace) std::reverse(idx.begin(), idx.end());
            if (idx[0].b >= B) continue;
            std::vector<WkvState> incoming;  // per-thread registers, read before the first barrier
            for (auto& d : idx) incoming.push_back(wkv_chunk_incoming<IO>(a, d));
            for (auto& d : idx) wkv_chunk_summary<IO>(a, d, buf[0]);
            int cur = 0;
            for (int offset = 1; offset < by; offset <<= 1) {
                for (auto& d : idx) wkv_chunk_scan_step<IO>(a, d, offset, buf[cur], buf[cur ^ 1]);
                cur ^= 1;
            }
            for (size_t i = 0; i < idx.size(); ++i) wkv_chunk_output<IO>(a, idx[i], incoming[i], buf[cur]);
        }
    } else {
        return 2;
    }

    FILE* fo = fopen(out, "wb");
    if (!fo) return 2;
    ok = write_n(fo, y.data() + off, n_seq) && write_n(fo, aa_w, n_state) && write_n(fo, bb_w, n_state) &&
         write_n(fo, pp_w, n_state);
    fclose(fo);
    return ok ? 0 : 2;
}

int main(int argc, char** argv) {
    if (argc == 5 && std::string(argv[1]) == "cvt") return run_cvt(atol(argv[2]), argv[3], argv[4]);
    if (argc != 12) {
        fprintf(stderr, "usage: %s FORM IO B T C BLOCK_X BLOCK_Y GRID_X FLAGS IN OUT | cvt N IN OUT\n", argv[0]);
        return 2;
    }
    const std::string form = argv[1], io = argv[2];
    const int B = atoi(argv[3]), T = atoi(argv[4]), C = atoi(argv[5]), bx = atoi(argv[6]), by = atoi(argv[7]);
    const long gx = atol(argv[8]);
    const int flags = atoi(argv[9]);
    if (io == "f32") return run<float>(form, B, T, C, bx, by, gx, flags, argv[10], argv[11]);
    if (io == "f16") return run<wkv_half>(form, B, T, C, bx, by, gx, flags, argv[10], argv[11]);
    return 2;
}
