// ---- skinny GEMM: dst[t, n] = sum_k x[t, k] * w[n, k] for a few tokens ----
//
// One warp per output column n, TT tokens per block row (grid.y walks token
// chunks). Activations stay f32 (exact products with the weight), weights
// stream once per chunk with 16-byte loads: the decode-time GEMV.

__device__ __forceinline__ void load8(const float* p, float* o) {
  const float4 a = *(const float4*)p, b = *(const float4*)(p + 4);
  o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
// unpack8 widens eight bf16 values packed in w.
__device__ __forceinline__ void unpack8(const uint4 w, float* o) {
  const unsigned q[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    o[2 * i] = __uint_as_float(q[i] << 16);
    o[2 * i + 1] = __uint_as_float(q[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void load8(const bf16* p, float* o) { unpack8(*(const uint4*)p, o); }
__device__ __forceinline__ void load8(const f16* p, float* o) {
  const uint4 r = *(const uint4*)p;
  const unsigned u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f16 lo, hi;
    lo.x = (u16)(u[i] & 0xffffu);
    hi.x = (u16)(u[i] >> 16);
    o[2 * i] = tof(lo);
    o[2 * i + 1] = tof(hi);
  }
}

// A skinny launch serves up to three MatMuls that share x (q, k and v
// projections): output column n of the concatenation [N0 | N1 | N2] picks
// its weight, bias (f32, may be null) and destination.
struct Seg3 {
  float* d[3];
  const void* w[3];
  const float* b[3];
  int n[3];
  int ldd[3];
};

template <typename W, int TT>
__device__ void skinny(const float* x, int T, int K, int ldx, Seg3 sg) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int n = blockIdx.x * (blockDim.x >> 5) + warp;
  int s = 0;
  if (n >= sg.n[0]) { n -= sg.n[0]; s = 1; if (n >= sg.n[1]) { n -= sg.n[1]; s = 2; if (n >= sg.n[2]) return; } }
  const W* wr = (const W*)sg.w[s] + (long long)n * K;
  const int t0 = blockIdx.y * TT;
  const int tn = min(TT, T - t0);
  const float* xr = x + (long long)t0 * ldx;
  float acc[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) acc[t] = 0.f;
  if ((K & 7) == 0 && (ldx & 3) == 0) {
    int k = lane * 8;
    // Four 16-byte weight loads in flight per lane before any use: one
    // load at a time leaves a decode GEMV latency-bound, far from HBM speed.
    for (; k + 3 * 256 < K; k += 4 * 256) {
      float wv[4][8];
#pragma unroll
      for (int u = 0; u < 4; ++u) load8(wr + k + u * 256, wv[u]);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
#pragma unroll
        for (int t = 0; t < TT; ++t) {
          if (t < tn) {
            float xv[8];
            load8(xr + (long long)t * ldx + k + u * 256, xv);
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[t] += wv[u][i] * xv[i];
          }
        }
      }
    }
    for (; k < K; k += 256) {
      float wv[8];
      load8(wr + k, wv);
#pragma unroll
      for (int t = 0; t < TT; ++t) {
        if (t < tn) {
          float xv[8];
          load8(xr + (long long)t * ldx + k, xv);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[t] += wv[i] * xv[i];
        }
      }
    }
  } else {
    for (int k = lane; k < K; k += 32) {
      const float wv = tof(wr[k]);
#pragma unroll
      for (int t = 0; t < TT; ++t)
        if (t < tn) acc[t] += wv * xr[(long long)t * ldx + k];
    }
  }
  const float bias = sg.b[s] ? sg.b[s][n] : 0.f;
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    if (t < tn) {
      const float v = warpSum(acc[t]);
      if (lane == 0) sg.d[s][(long long)(t0 + t) * sg.ldd[s] + n] = v + bias;
    }
  }
}

#define INST_SKINNY(W, S, TT)                                                                    \
  extern "C" __global__ void skinny_##S##_##TT(const float* x, int T, int K, int ldx, Seg3 sg) { \
    PDL_ENTRY();                                                                                     \
    skinny<W, TT>(x, T, K, ldx, sg);                                                             \
  }
#define INST_SKINNY_ALL(W, S) INST_SKINNY(W, S, 1) INST_SKINNY(W, S, 2) INST_SKINNY(W, S, 4) INST_SKINNY(W, S, 8)
#if KUNIT(34)
INST_SKINNY_ALL(float, f32)
INST_SKINNY_ALL(bf16, bf16)
INST_SKINNY_ALL(f16, f16)
#endif

// ---- bf16 GEMV for decode: dst[t, n] = sum_k bf16(x[t, k]) * w[n, k] ----
//
// Bandwidth-bound at a few tokens: every weight byte is read once with
// 16-byte non-coherent loads that skip L1 (L1::no_allocate), so the small
// x rows stay L1-resident for all warps of the SM. KS warps split one row's
// K (interleaved 16-byte vectors) and reduce through shared memory: short N
// (o, down) still puts thousands of warps in flight. x is bf16 (the norm's
// copy) or f32 rounded to bf16 on load, so results equal the cuBLAS path's
// inputs (bf16 x, bf16 w, f32 accumulation) up to summation order.

// ldw16 is volatile so that dgemv's weight loads stay ahead of griddepcontrol.wait.
__device__ __forceinline__ uint4 ldw16(const void* p) {
  uint4 r;
#if __CUDA_ARCH__ >= 700
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
#else
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
#endif
  return r;
}

// x is read as it is: f32 x is not rounded (the weights dominate the bytes).
__device__ __forceinline__ void xload8(const bf16* p, float* o) { load8(p, o); }
__device__ __forceinline__ void xload8(const float* p, float* o) { load8(p, o); }

// dotW8 adds the eight bf16 weights packed in w, dotted with vector v of
// each of x's first tn (at most M) rows, to acc.
template <typename X, int M>
__device__ __forceinline__ void dotW8(const X* xr, int ldx, int v, int tn, const uint4 w, float (&acc)[M]) {
  float w8[8];
  unpack8(w, w8);
#pragma unroll
  for (int t = 0; t < M; ++t) {
    if (t < tn) {
      float xv[8];
      xload8(xr + (long long)t * ldx + v * 8, xv);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[t] += w8[i] * xv[i];
    }
  }
}

template <typename X, int M, int KS>
__device__ void gemv_bf16(const X* x, int T, int K, int ldx, Seg3 sg) {
  constexpr int U = 8;  // 16-byte weight loads in flight per lane
  __shared__ float red[8][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int ks = warp % KS;
  int n = blockIdx.x * (8 / KS) + warp / KS;
  int s = 0;
  bool ok = true;
  if (n >= sg.n[0]) {
    n -= sg.n[0];
    s = 1;
    if (n >= sg.n[1]) {
      n -= sg.n[1];
      s = 2;
      if (n >= sg.n[2]) ok = false;
    }
  }
  const int t0 = blockIdx.y * M;
  const int tn = min(M, T - t0);
  float acc[M];
#pragma unroll
  for (int t = 0; t < M; ++t) acc[t] = 0.f;
  if (ok) {
    const bf16* wr = (const bf16*)sg.w[s] + (long long)n * K;
    const X* xr = x + (long long)t0 * ldx;
    const int nvec = K >> 3;
    const int step = 32 * KS;
    for (int v0 = ks * 32 + lane; v0 < nvec; v0 += U * step) {
      uint4 wv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + u * step;
        if (v < nvec) wv[u] = ldw16(wr + (long long)v * 8);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + u * step;
        if (v < nvec) dotW8<X, M>(xr, ldx, v, tn, wv[u], acc);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < M; ++t) acc[t] = warpSum(acc[t]);
  if (KS > 1) {
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < M; ++t) red[warp][t] = acc[t];
    }
    __syncthreads();
    if (ks != 0) return;
#pragma unroll
    for (int t = 0; t < M; ++t) {
      float v = 0.f;
#pragma unroll
      for (int j = 0; j < KS; ++j) v += red[warp + j][t];
      acc[t] = v;
    }
  }
  if (!ok || lane != 0) return;
  const float bias = sg.b[s] ? sg.b[s][n] : 0.f;
#pragma unroll
  for (int t = 0; t < M; ++t)
    if (t < tn) sg.d[s][(long long)(t0 + t) * sg.ldd[s] + n] = acc[t] + bias;
}

// gemvp_bf16 is the persistent form (KS 1): a grid sized to the SMs, each
// warp walking rows with a grid stride, so no block launch and retire per
// few kilobytes of weight.
template <typename X, int M>
__device__ void gemvp_bf16(const X* x, int T, int K, int ldx, Seg3 sg) {
  constexpr int U = 8;
  const int lane = threadIdx.x & 31;
  const int total = sg.n[0] + sg.n[1] + sg.n[2];
  const int nw = gridDim.x * (blockDim.x >> 5);
  const int nvec = K >> 3;
  const int t0 = blockIdx.y * M;
  const int tn = min(M, T - t0);
  const X* xr = x + (long long)t0 * ldx;
  for (int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); row < total; row += nw) {
    int n = row, s = 0;
    if (n >= sg.n[0]) {
      n -= sg.n[0];
      s = 1;
      if (n >= sg.n[1]) {
        n -= sg.n[1];
        s = 2;
      }
    }
    const bf16* wr = (const bf16*)sg.w[s] + (long long)n * K;
    float acc[M];
#pragma unroll
    for (int t = 0; t < M; ++t) acc[t] = 0.f;
    for (int v0 = lane; v0 < nvec; v0 += U * 32) {
      uint4 wv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + u * 32;
        if (v < nvec) wv[u] = ldw16(wr + (long long)v * 8);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + u * 32;
        if (v < nvec) dotW8<X, M>(xr, ldx, v, tn, wv[u], acc);
      }
    }
#pragma unroll
    for (int t = 0; t < M; ++t) acc[t] = warpSum(acc[t]);
    if (lane == 0) {
      const float bias = sg.b[s] ? sg.b[s][n] : 0.f;
#pragma unroll
      for (int t = 0; t < M; ++t)
        if (t < tn) sg.d[s][(long long)(t0 + t) * sg.ldd[s] + n] = acc[t] + bias;
    }
  }
}

#define INST_GEMVP(X, XS, M)                                                                                   \
  extern "C" __global__ void __launch_bounds__(256, 4) gemv_bf16_x##XS##_##M##_p(const X* x, int T, int K, int ldx, \
                                                                                Seg3 sg) {                      \
    PDL_ENTRY();                                                                                     \
    gemvp_bf16<X, M>(x, T, K, ldx, sg);                                                                        \
  }
#if KUNIT(2)
INST_GEMVP(bf16, bf16, 1) INST_GEMVP(bf16, bf16, 2) INST_GEMVP(bf16, bf16, 4) INST_GEMVP(bf16, bf16, 8)
#endif
#if KUNIT(3)
INST_GEMVP(float, f32, 1) INST_GEMVP(float, f32, 2) INST_GEMVP(float, f32, 4) INST_GEMVP(float, f32, 8)
#endif

#define INST_GEMV(X, XS, M, KS)                                                                          \
  extern "C" __global__ void __launch_bounds__(256) gemv_bf16_x##XS##_##M##_##KS(const X* x, int T, int K, \
                                                                                  int ldx, Seg3 sg) {     \
    PDL_ENTRY();                                                                                     \
    gemv_bf16<X, M, KS>(x, T, K, ldx, sg);                                                               \
  }
#define INST_GEMV_KS(X, XS, M) INST_GEMV(X, XS, M, 1) INST_GEMV(X, XS, M, 2) INST_GEMV(X, XS, M, 4) INST_GEMV(X, XS, M, 8)
// Each x type's GEMVs in two units (2 and 30, 3 and 31), so that no unit
// of a cold start's compile is much longer than the others.
#if KUNIT(2)
INST_GEMV_KS(bf16, bf16, 1) INST_GEMV_KS(bf16, bf16, 2)
#endif
#if KUNIT(30)
INST_GEMV_KS(bf16, bf16, 4) INST_GEMV_KS(bf16, bf16, 8)
#endif
#if KUNIT(3)
INST_GEMV_KS(float, f32, 1) INST_GEMV_KS(float, f32, 2)
#endif
#if KUNIT(31)
INST_GEMV_KS(float, f32, 4) INST_GEMV_KS(float, f32, 8)
#endif
