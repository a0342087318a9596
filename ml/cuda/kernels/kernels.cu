// llmserve CUDA kernels, compiled at run time by NVRTC for the device's
// architecture. No headers: bf16/f16 conversions are done by hand so the
// file compiles with any NVRTC without its include directory.
//
// Conventions: tensors are row-major; activations are f32; weights are
// f32, f16 or bf16 (one extern "C" entry point per dtype, suffix _f32,
// _f16, _bf16); sizes that can pass 2^31 are long long.

typedef unsigned short u16;
struct bf16 { u16 x; };
struct f16 { u16 x; };

#define NEG_INF (-__int_as_float(0x7f800000))

// Programmatic dependent launch (Hopper+, Options.EnablePDL). A kernel may
// then be launched to start while its predecessor drains, so each first waits for it
// (griddepcontrol.wait returns once the previous grid has completed and its
// writes are visible) and only then lets its own successor launch: at most
// two grids overlap, and no grid reads or writes activations early. Only
// dgemv does work before the wait: it loads weights, which no kernel writes.
// On older GPUs, or launched without the attribute, both are no-ops.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_WAIT()
#define PDL_LAUNCH()
#endif
#define PDL_ENTRY() \
  do {              \
    PDL_WAIT();     \
    PDL_LAUNCH();   \
  } while (0)

__device__ __forceinline__ float tof(float v) { return v; }
__device__ __forceinline__ float tof(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }
__device__ __forceinline__ float tof(f16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x));
  return f;
}

__device__ __forceinline__ u16 f2bf(float v) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return (u16)(u >> 16);
}
__device__ __forceinline__ u16 f2h(float v) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  return h;
}

__device__ __forceinline__ void stf(float* p, float v) { *p = v; }
__device__ __forceinline__ void stf(bf16* p, float v) { p->x = f2bf(v); }
__device__ __forceinline__ void stf(f16* p, float v) { p->x = f2h(v); }

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// blockSum returns the sum of v over the block (blockDim.x a multiple of 32).
__device__ float blockSum(float v) {
  __shared__ float s[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0) s[w] = v;
  __syncthreads();
  if (w == 0) {
    v = (lane < (int)(blockDim.x >> 5)) ? s[lane] : 0.f;
    v = warpSum(v);
    if (lane == 0) s[0] = v;
  }
  __syncthreads();
  return s[0];
}

// ---- casts (activations to the GEMM input dtype) ----

extern "C" __global__ void cast_f32_bf16(bf16* dst, const float* src, long long n) {
  PDL_ENTRY();
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    dst[i].x = f2bf(src[i]);
}
extern "C" __global__ void cast_f32_f16(f16* dst, const float* src, long long n) {
  PDL_ENTRY();
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    dst[i].x = f2h(src[i]);
}

// ---- embedding: dst[r] = table[ids[r]]; out-of-range ids give zeros ----

template <typename T>
__device__ void embedding(float* dst, const T* table, const int* ids, int D, int vocab) {
  const int r = blockIdx.x;
  const int id = ids[r];
  float* o = dst + (long long)r * D;
  if (id < 0 || id >= vocab) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = 0.f;
    return;
  }
  const T* t = table + (long long)id * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = tof(t[d]);
}

// ---- RMSNorm (optionally after a residual add); dst16 (may be null) gets a
// bf16 copy of dst for the GEMM that usually follows ----

template <typename W>
__device__ void rmsnorm(float* dst, bf16* dst16, const float* x, const W* w, int D, float eps) {
  const long long off = (long long)blockIdx.x * D;
  const float* xr = x + off;
  float ss = 0.f;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = xr[d];
    ss += v * v;
  }
  ss = blockSum(ss);
  const float r = 1.0f / sqrtf(ss / (float)D + eps);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const float y = (xr[d] * r) * tof(w[d]);
    dst[off + d] = y;
    if (dst16) dst16[off + d].x = f2bf(y);
  }
}

template <typename W>
__device__ void add_rmsnorm(float* residual, float* dst, bf16* dst16, const float* x, const W* w, int D, float eps) {
  const long long off = (long long)blockIdx.x * D;
  float* rr = residual + off;
  const float* xr = x + off;
  float ss = 0.f;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = rr[d] + xr[d];
    rr[d] = v;
    ss += v * v;
  }
  ss = blockSum(ss);
  const float r = 1.0f / sqrtf(ss / (float)D + eps);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const float y = (rr[d] * r) * tof(w[d]);
    dst[off + d] = y;
    if (dst16) dst16[off + d].x = f2bf(y);
  }
}

// ---- bias: dst[t, n] += bias[n] ----

template <typename B>
__device__ void bias_add(float* dst, const B* bias, int N, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    dst[i] += tof(bias[i % N]);
}

#define INST_W(T, S)                                                                                   \
  extern "C" __global__ void embedding_##S(float* dst, const T* table, const int* ids, int D, int vocab) { \
    PDL_ENTRY();                                                                                     \
    embedding<T>(dst, table, ids, D, vocab);                                                           \
  }                                                                                                    \
  extern "C" __global__ void rmsnorm_##S(float* dst, bf16* dst16, const float* x, const T* w, int D, float eps) { \
    PDL_ENTRY();                                                                                     \
    rmsnorm<T>(dst, dst16, x, w, D, eps);                                                              \
  }                                                                                                    \
  extern "C" __global__ void add_rmsnorm_##S(float* residual, float* dst, bf16* dst16, const float* x, const T* w, \
                                             int D, float eps) {                                       \
    PDL_ENTRY();                                                                                     \
    add_rmsnorm<T>(residual, dst, dst16, x, w, D, eps);                                                \
  }                                                                                                    \
  extern "C" __global__ void bias_add_##S(float* dst, const T* bias, int N, long long n) {             \
    PDL_ENTRY();                                                                                     \
    bias_add<T>(dst, bias, N, n);                                                                      \
  }

INST_W(float, f32)
INST_W(bf16, bf16)
INST_W(f16, f16)

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
INST_SKINNY_ALL(float, f32)
INST_SKINNY_ALL(bf16, bf16)
INST_SKINNY_ALL(f16, f16)

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

__device__ __forceinline__ void xload8(const bf16* p, float* o) { load8(p, o); }
__device__ __forceinline__ void xload8(const float* p, float* o) {
  load8(p, o);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = __uint_as_float(((unsigned)f2bf(o[i])) << 16);
}

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
INST_GEMVP(bf16, bf16, 1) INST_GEMVP(bf16, bf16, 2) INST_GEMVP(bf16, bf16, 4) INST_GEMVP(bf16, bf16, 8)
INST_GEMVP(float, f32, 1) INST_GEMVP(float, f32, 2) INST_GEMVP(float, f32, 4) INST_GEMVP(float, f32, 8)

#define INST_GEMV(X, XS, M, KS)                                                                          \
  extern "C" __global__ void __launch_bounds__(256) gemv_bf16_x##XS##_##M##_##KS(const X* x, int T, int K, \
                                                                                  int ldx, Seg3 sg) {     \
    PDL_ENTRY();                                                                                     \
    gemv_bf16<X, M, KS>(x, T, K, ldx, sg);                                                               \
  }
#define INST_GEMV_KS(X, XS, M) INST_GEMV(X, XS, M, 1) INST_GEMV(X, XS, M, 2) INST_GEMV(X, XS, M, 4) INST_GEMV(X, XS, M, 8)
#define INST_GEMV_M(X, XS) INST_GEMV_KS(X, XS, 1) INST_GEMV_KS(X, XS, 2) INST_GEMV_KS(X, XS, 4) INST_GEMV_KS(X, XS, 8)
INST_GEMV_M(bf16, bf16)
INST_GEMV_M(float, f32)

// ---- RoPE, HF rotate_half layout, in place on x[T, stride] (first
// numHeads*headDim columns) ----

// rope_kv rotates x0 (nh0 heads, e.g. q) and x1 (nh1 heads, e.g. k) in
// place; with kc non-null it also stores x1 (rotated) and v into the KV
// cache at slots[t] (x1 then holds exactly the cache's nh1 KV heads).
template <typename KV>
__device__ void rope_kv(float* x0, int nh0, int stride0, float* x1, int nh1, int stride1, const int* pos,
                        const float* invFreq, int headDim, KV* kc, KV* vc, const float* v, int vStride,
                        const int* slots, long long numSlots, const float* bias) {
  const int t = blockIdx.x;
  const int half = headDim / 2;
  const float p = (float)pos[t];
  const int slot = kc ? slots[t] : -1;
  const bool store = slot >= 0 && slot < numSlots;
  for (int i = threadIdx.x; i < (nh0 + nh1) * half; i += blockDim.x) {
    int h = i / half;
    const int j = i - h * half;
    float* xr = x0 + (long long)t * stride0;
    const bool isK = h >= nh0;
    if (isK) {
      h -= nh0;
      xr = x1 + (long long)t * stride1;
    }
    float s, c;
    sincosf(p * invFreq[j], &s, &c);
    float* hp = xr + h * headDim;
    float a = hp[j], b = hp[j + half];
    if (bias) {  // the q, k (and below v) projection biases, fused here
      const float* bp = bias + (isK ? nh0 * headDim : 0) + h * headDim;
      a += bp[j];
      b += bp[j + half];
    }
    const float na = a * c - b * s, nb = b * c + a * s;
    hp[j] = na;
    hp[j + half] = nb;
    if (isK && store) {
      const long long o = (long long)slot * nh1 * headDim + (long long)h * headDim;
      const float* vr = v + (long long)t * vStride + h * headDim;
      stf(kc + o + j, na);
      stf(kc + o + j + half, nb);
      float v0 = vr[j], v1 = vr[j + half];
      if (bias) {
        const float* bp = bias + (nh0 + nh1) * headDim + h * headDim;
        v0 += bp[j];
        v1 += bp[j + half];
      }
      stf(vc + o + j, v0);
      stf(vc + o + j + half, v1);
    }
  }
}

#define INST_ROPE(KV, S)                                                                                      \
  extern "C" __global__ void rope_kv_##S(float* x0, int nh0, int stride0, float* x1, int nh1, int stride1,   \
                                         const int* pos, const float* invFreq, int headDim, KV* kc, KV* vc,  \
                                         const float* v, int vStride, const int* slots, long long numSlots,  \
                                         const float* bias) {                                                \
    PDL_ENTRY();                                                                                     \
    rope_kv<KV>(x0, nh0, stride0, x1, nh1, stride1, pos, invFreq, headDim, kc, vc, v, vStride, slots,       \
                numSlots, bias);                                                                              \
  }
INST_ROPE(float, f32)
INST_ROPE(bf16, bf16)

// ---- SiLU-and-mul: dst[t, i] = silu(gu[t, i]) * gu[t, I+i] ----

extern "C" __global__ void silu_mul(float* dst, bf16* dst16, const float* gu, int I, long long n) {
  PDL_ENTRY();
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n; idx += (long long)gridDim.x * blockDim.x) {
    const long long t = idx / I;
    const int i = (int)(idx - t * I);
    const float g = gu[t * 2 * I + i];
    const float u = gu[t * 2 * I + I + i];
    const float y = g / (1.0f + expf(-g)) * u;
    dst[idx] = y;
    if (dst16) dst16[idx].x = f2bf(y);
  }
}

// ---- GatherRows: dst[r] = src[idx[r]] (zeros when out of range) ----

extern "C" __global__ void gather_rows(float* dst, const float* src, const int* idx, int cols, int srcRows) {
  PDL_ENTRY();
  const int r = blockIdx.x;
  const int i = idx[r];
  float* o = dst + (long long)r * cols;
  if (i < 0 || i >= srcRows) {
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = 0.f;
    return;
  }
  const float* s = src + (long long)i * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = s[c];
}

// ---- argmax per row (lowest index wins ties) ----
//
// Grid (nb, rows): block b reduces its slice of the row to one (value,
// index) partial; the last block of a row to finish (a counter per row,
// zero between launches) reduces the partials. One launch, and a 152k-entry
// vocabulary spread over ~75 blocks instead of one.

__device__ __forceinline__ void amax(float& best, int& bi, float v, int i) {
  if (v > best || (v == best && i < bi)) {
    best = v;
    bi = i;
  }
}

__device__ void blockArgmax(float& best, int& bi) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
  __shared__ float sv[32];
  __shared__ int si[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sv[w] = best;
    si[w] = bi;
  }
  __syncthreads();
  const int nw = blockDim.x >> 5;
  best = lane < nw ? sv[lane] : NEG_INF;
  bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

extern "C" __global__ void argmax_rows(int* out, const float* x, int N, float* partV, int* partI, unsigned* counter) {
  PDL_ENTRY();
  const int row = blockIdx.y, nb = gridDim.x;
  const float* xr = x + (long long)row * N;
  const int per = (N + nb - 1) / nb;
  const int i0 = blockIdx.x * per, i1 = min(N, i0 + per);
  float best = NEG_INF;
  int bi = 0x7fffffff;
  for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x) amax(best, bi, xr[i], i);
  blockArgmax(best, bi);
  __shared__ bool last;
  if (threadIdx.x == 0) {
    partV[row * nb + blockIdx.x] = best;
    partI[row * nb + blockIdx.x] = bi;
    __threadfence();
    last = atomicAdd(&counter[row], 1u) == (unsigned)nb - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  best = NEG_INF;
  bi = 0x7fffffff;
  for (int b = threadIdx.x; b < nb; b += blockDim.x) {
    const float v = ((volatile float*)partV)[row * nb + b];
    const int i = ((volatile int*)partI)[row * nb + b];
    amax(best, bi, v, i);
  }
  blockArgmax(best, bi);
  if (threadIdx.x == 0) {
    out[row] = bi == 0x7fffffff ? 0 : bi;
    counter[row] = 0;
  }
}

// ---- KV cache write: cache[slot, :] = k[t, :] (slot < 0 skips a padding token) ----

template <typename KV>
__device__ void write_kv(KV* kc, KV* vc, const float* k, const float* v, const int* slots, int kvdim, int kStride,
                         int vStride, long long numSlots) {
  const int t = blockIdx.x;
  const int s = slots[t];
  if (s < 0 || s >= numSlots) return;
  KV* ko = kc + (long long)s * kvdim;
  KV* vo = vc + (long long)s * kvdim;
  const float* kr = k + (long long)t * kStride;
  const float* vr = v + (long long)t * vStride;
  for (int d = threadIdx.x; d < kvdim; d += blockDim.x) {
    stf(ko + d, kr[d]);
    stf(vo + d, vr[d]);
  }
}

// gridArrive and gridWait are the two halves of a barrier over all blocks
// of a launch whose blocks are all resident (a cooperative launch): a block
// arrives as soon as its writes are done, issues loads that need no
// barrier (the next phase's weights), then waits. bar[0] counts every
// arrival of the launch, so barrier k (1, 2, ... per launch) is complete at
// k·gridDim.x arrivals. Nothing is reset between barriers; gridExit zeroes
// the words for the next launch.
//
// By default (gridMode 3) the waiters poll the count itself: the barrier
// is complete the moment the last arrival's atomic lands. (Having the
// completing block publish k in a generation word, which the others
// polled, added its atomic's return, a fence and a store to every barrier:
// 1.746 against 1.657 ms per step side by side on an H100.) Acquires are
// kept off the loops: on this GPU every gpu-scope acquire invalidates the
// SM's whole L1 (CCTL.IVALL), so an acquire per poll kept wiping the L1
// (activations, spills) of the block sharing the SM that was still
// working. Arrivals are release atomics; a waiter polls with relaxed loads
// and then acquires once, which synchronizes with every arrival through
// the count's release sequence.
__device__ __forceinline__ unsigned ldAcquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned ldRelaxed(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void stRelease(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void fenceAcqRel() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }
// The generation word (modes 0 and 1) is on its own 128-byte line
// (bar[32]); bar[16] counts the blocks that have left the kernel.
#define STEP_EXIT 16
#define STEP_GEN 32
#define STEP_SPLITS 64
__shared__ unsigned gridK;  // the barriers thread 0 has arrived at in this launch
__device__ __forceinline__ unsigned addRelease(unsigned* p, unsigned v) {
  unsigned old;
  asm volatile("atom.add.release.gpu.global.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}
// gridMode (StepArgs.syncMode; the others are kept for benchmarks): 3
// waiters poll the count, then one acquire load; 2 the same with a fence
// (MEMBAR) instead of the load; 0 the completing block publishes k in
// bar[STEP_GEN] (after a fence), waiters poll that, then one acquire load;
// 1 as 0 with a fence instead of the waiters' load; 4 as 3, but the last
// attention piece of a head acquires with a fence, as modes 0-2 do.
__shared__ int gridMode;
__device__ __forceinline__ void gridStart(int mode) {
  if (threadIdx.x == 0) {
    gridK = 0;
    gridMode = mode;
  }
}
__device__ __forceinline__ void gridArrive(unsigned* bar) {
  if (!bar) return;
  __syncthreads();  // the block's writes, before thread 0's release
  if (threadIdx.x == 0) {
    const unsigned k = ++gridK;
    if (addRelease(bar, 1u) == k * gridDim.x - 1 && gridMode < 2) {
      fenceAcqRel();
      stRelease(bar + STEP_GEN, k);
    }
  }
}
__device__ __forceinline__ void gridWait(unsigned* bar) {
  if (!bar) return;
  if (threadIdx.x == 0) {
    const int mode = gridMode;
    if (mode >= 2) {
      const unsigned want = gridK * gridDim.x;
      while ((int)(ldRelaxed(bar) - want) < 0) {
      }
      if (mode == 2)
        fenceAcqRel();
      else
        ldAcquire(bar);
    } else {
      while ((int)(ldRelaxed(bar + STEP_GEN) - gridK) < 0) {
      }
      if (mode == 1)
        fenceAcqRel();
      else
        ldAcquire(bar + STEP_GEN);
    }
  }
  __syncthreads();  // the acquire, to the whole block
}
// gridExit: the last block to leave zeroes the count and the generation
// (no block polls them any more; the next launch sees the zeros).
__device__ __forceinline__ void gridExit(unsigned* bar) {
  if (threadIdx.x == 0 && atomicAdd(bar + STEP_EXIT, 1u) == gridDim.x - 1) {
    bar[0] = 0;
    bar[STEP_GEN] = 0;
    bar[STEP_EXIT] = 0;
  }
}
__device__ __forceinline__ void gridSync(unsigned* bar) {
  gridArrive(bar);
  gridWait(bar);
}

// ---- paged attention ----
//
// Grid (KVH * ceil(G/MAXG), T, numSplits), NWARPS warps per block. A block
// serves one token and up to MAXG query heads that share one KV head (GQA:
// every K/V row is loaded once for the whole group). A token's context
// [0, pos] is cut into numSplits equal pieces computed on the device from its
// own position, so the launch shape depends only on T and numSplits (the
// step can be replayed from a CUDA graph as the context grows). Each warp
// walks keys p = s0+warp, s0+warp+NWARPS, ...; lane l holds elements
// [l*EPL, l*EPL+EPL) of the head. With numSplits == 1 the block writes the
// normalized output, else unnormalized partials that attn_combine merges.

#define NWARPS 4
#define MAXG 8
#define KU 2

template <typename KV, int EPL>
__device__ void attention(float* out, float* partO, float* partML, const float* q, const KV* kc, const KV* vc,
                          const int* tokenSeq, const int* positions, const int* blockTables, int maxBlocks,
                          int blockSize, int numBlocks, int H, int KVH, int D, float scale, int numSplits,
                          int qStride, int outStride, bf16* out16, int window) {
  __shared__ float sAcc[NWARPS][32 * EPL];
  __shared__ float sM[NWARPS], sL[NWARPS];
  const int G = H / KVH;
  const int ngc = (G + MAXG - 1) / MAXG;
  const int kvh = blockIdx.x / ngc;
  const int g0 = (blockIdx.x - kvh * ngc) * MAXG;
  const int gn = min(MAXG, G - g0);
  const int h0 = kvh * G + g0;
  const int t = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int seq = tokenSeq[t];
  const int ctx = positions[t] + 1;
  // A sliding window (window > 0) attends to the last window positions.
  const int first = window > 0 ? max(0, ctx - window) : 0;
  const int per = (ctx - first + numSplits - 1) / numSplits;
  const int s0 = first + split * per;
  const int s1 = min(ctx, s0 + per);
  const int* bt = blockTables + (long long)seq * maxBlocks;
  const long long kvRow = (long long)KVH * D;

  float qr[MAXG][EPL], acc[MAXG][EPL], m[MAXG], l[MAXG];
  const float* qt = q + (long long)t * qStride + (long long)h0 * D;
#pragma unroll
  for (int g = 0; g < MAXG; ++g) {
    m[g] = NEG_INF;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      const int d = lane * EPL + e;
      acc[g][e] = 0.f;
      qr[g][e] = (g < gn && d < D) ? qt[g * D + d] * scale : 0.f;
    }
  }

  for (int pb = s0 + warp * KU; pb < s1; pb += NWARPS * KU) {
    float kr[KU][EPL], vr[KU][EPL];
    bool ok[KU];
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      const int p = pb + u;
      const int bi = p / blockSize;
      ok[u] = p < s1 && bi < maxBlocks;
      int blk = ok[u] ? bt[bi] : 0;
      if (blk < 0 || blk >= numBlocks) { ok[u] = false; blk = 0; }
      const long long base = ((long long)blk * blockSize + (p - bi * blockSize)) * kvRow + (long long)kvh * D;
#pragma unroll
      for (int e = 0; e < EPL; ++e) {
        const int d = lane * EPL + e;
        const bool in = ok[u] && d < D;
        kr[u][e] = in ? tof(kc[base + d]) : 0.f;
        vr[u][e] = in ? tof(vc[base + d]) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      if (!ok[u]) continue;
#pragma unroll
      for (int g = 0; g < MAXG; ++g) {
        if (g < gn) {
          float s = 0.f;
#pragma unroll
          for (int e = 0; e < EPL; ++e) s += qr[g][e] * kr[u][e];
          s = warpSum(s);
          const float mn = fmaxf(m[g], s);
          const float c = expf(m[g] - mn);
          const float pe = expf(s - mn);
          l[g] = l[g] * c + pe;
#pragma unroll
          for (int e = 0; e < EPL; ++e) acc[g][e] = acc[g][e] * c + pe * vr[u][e];
          m[g] = mn;
        }
      }
    }
  }

#pragma unroll
  for (int g = 0; g < MAXG; ++g) {
    if (g < gn) {
      if (lane == 0) {
        sM[warp] = m[g];
        sL[warp] = l[g];
      }
#pragma unroll
      for (int e = 0; e < EPL; ++e) sAcc[warp][lane * EPL + e] = acc[g][e];
      __syncthreads();
      float M = NEG_INF;
#pragma unroll
      for (int w = 0; w < NWARPS; ++w) M = fmaxf(M, sM[w]);
      float L = 0.f, f[NWARPS];
#pragma unroll
      for (int w = 0; w < NWARPS; ++w) {
        f[w] = sM[w] == NEG_INF ? 0.f : expf(sM[w] - M);
        L += sL[w] * f[w];
      }
      const int h = h0 + g;
      for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < NWARPS; ++w) o += sAcc[w][d] * f[w];
        if (numSplits == 1) {
          const long long oi = (long long)t * outStride + (long long)h * D + d;
          const float y = L > 0.f ? o / L : 0.f;
          out[oi] = y;
          if (out16) out16[oi].x = f2bf(y);  // the o projection's bf16 input
        } else
          partO[(((long long)t * H + h) * numSplits + split) * D + d] = o;
      }
      if (numSplits > 1 && threadIdx.x == 0) {
        const long long i = ((long long)t * H + h) * numSplits + split;
        partML[2 * i] = M;
        partML[2 * i + 1] = L;
      }
      __syncthreads();
    }
  }
}

#define INST_ATTN(KV, S, EPL)                                                                                  \
  extern "C" __global__ void __launch_bounds__(NWARPS * 32) attention_##S##_##EPL(                           \
      float* out, float* partO, float* partML, const float* q, const KV* kc, const KV* vc, const int* tokenSeq, \
      const int* positions, const int* blockTables, int maxBlocks, int blockSize, int numBlocks, int H, int KVH, \
      int D, float scale, int numSplits, int qStride, int outStride, bf16* out16, int window) {                 \
    PDL_ENTRY();                                                                                                \
    attention<KV, EPL>(out, partO, partML, q, kc, vc, tokenSeq, positions, blockTables, maxBlocks, blockSize,   \
                       numBlocks, H, KVH, D, scale, numSplits, qStride, outStride, out16, window);              \
  }

#define INST_KV(KV, S)                                                                                          \
  INST_ATTN(KV, S, 1)                                                                                           \
  INST_ATTN(KV, S, 2)                                                                                           \
  INST_ATTN(KV, S, 4)                                                                                           \
  INST_ATTN(KV, S, 8)                                                                                           \
  extern "C" __global__ void write_kv_##S(KV* kc, KV* vc, const float* k, const float* v, const int* slots,    \
                                          int kvdim, int kStride, int vStride, long long numSlots) {           \
    PDL_ENTRY();                                                                                     \
    write_kv<KV>(kc, vc, k, v, slots, kvdim, kStride, vStride, numSlots);                                       \
  }

INST_KV(float, f32)
INST_KV(bf16, bf16)

// attn_combine merges the numSplits partials of each (token, head).
// Grid (H, T), block >= 32 threads.
extern "C" __global__ void attn_combine(float* out, const float* partO, const float* partML, int H, int D,
                                        int numSplits, int outStride, bf16* out16) {
  PDL_ENTRY();
  const int h = blockIdx.x, t = blockIdx.y;
  const long long i0 = ((long long)t * H + h) * numSplits;
  float M = NEG_INF;
  for (int s = 0; s < numSplits; ++s) M = fmaxf(M, partML[2 * (i0 + s)]);
  float L = 0.f;
  for (int s = 0; s < numSplits; ++s) {
    const float ms = partML[2 * (i0 + s)];
    if (ms != NEG_INF) L += partML[2 * (i0 + s) + 1] * expf(ms - M);
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < numSplits; ++s) {
      const float ms = partML[2 * (i0 + s)];
      if (ms != NEG_INF) o += partO[(i0 + s) * D + d] * expf(ms - M);
    }
    const long long oi = (long long)t * outStride + (long long)h * D + d;
    const float y = L > 0.f ? o / L : 0.f;
    out[oi] = y;
    if (out16) out16[oi].x = f2bf(y);
  }
}

// ---- dgemv: the fused decode GEMV ----
//
// dst[t, :] for t < T <= M tokens from bf16 weights w [N, K] with f32
// accumulation. For EPI_ADD x is bf16 (xg, row stride ldx); the others
// take RMSNorm(xr)·nw of the f32 residual xr [T, K]: they dot the weights
// with xr·nw in f32 and scale by 1/rms(xr) at the end, the sums of squares
// accumulated alongside, so no pass over x precedes the weight stream (the
// unfused path instead rounds the normed x to bf16 for cuBLAS).
// A pair of rows, whose pairing the epilogue needs, is computed by KS warps
// that split K (a block holds 8/KS pairs):
//   EPI_STORE  rows 2p, 2p+1:     dst = acc (+bias)
//   EPI_ADD    rows 2p, 2p+1:     dst += acc (+bias)       (residual add; or
//                                 dst = res + acc when res is set)
//   EPI_SILU   rows p, I+p:       dst = dst16 = silu(g)·u   (gate, up; N = 2I)
//   EPI_ROPE   rows j, j+hd/2 of one head of [q | k | v]: bias, RoPE on q
//              and k, all three stored to dst, k and v to the KV cache.
// The first two batches of weight loads (up to 16 per lane) are issued
// before waiting for the previous kernel, so a small matrix is mostly in
// flight before its input exists.

#define EPI_STORE 0
#define EPI_ADD 1
#define EPI_SILU 2
#define EPI_ROPE 3
#define EPI_ADDF 4  // EPI_ADD with f32 x (xr, not normalized): the decode-step kernel


struct DArgs {
  const bf16* w;
  const float* bias;  // [N] or null
  const bf16* xg;     // EPI_ADD's bf16 x
  const float* xr;    // f32 x to normalize [T, K]
  const void* nw;     // norm weight [K], dtype nwdt (0 f32, 1 bf16, 2 f16)
  float* dst;
  bf16* dst16;        // EPI_SILU's bf16 copy
  const int* pos;     // EPI_ROPE
  const float* invFreq;
  void* kc;           // layer's K cache, dtype kvdt (0 f32, 1 bf16)
  void* vc;
  const int* slots;
  const float* res;  // EPI_ADD/ADDF: dst = res + acc (null: dst += acc)
  long long numSlots;
  int N, K, T, ldx, ldxr, ldd, nwdt, nh, nkv, hd, kvdt;
  float eps;
};

__device__ __forceinline__ float nwAt(const void* w, int dt, int k) {
  if (dt == 1) return tof(((const bf16*)w)[k]);
  if (dt == 2) return tof(((const f16*)w)[k]);
  return ((const float*)w)[k];
}

__device__ __forceinline__ void stKV(void* c, int dt, long long i, float v) {
  if (dt == 1)
    stf((bf16*)c + i, v);
  else
    ((float*)c)[i] = v;
}

// dgemvRows gives pair p's rows r0, r1 and the number of pairs P (see the
// epilogue table above).
template <int EPI>
__device__ __forceinline__ void dgemvRows(const DArgs& a, int p, int& P, int& r0, int& r1) {
  if (EPI == EPI_SILU) {
    P = a.N >> 1;
    r0 = p;
    r1 = p + P;
  } else if (EPI == EPI_ROPE) {
    P = a.N >> 1;
    const int half = a.hd >> 1, h = p / half;
    r0 = h * a.hd + (p - h * half);
    r1 = r0 + half;
  } else {
    P = (a.N + 1) >> 1;
    r0 = 2 * p;
    r1 = min(r0 + 1, a.N - 1);
  }
}

// dgemvDot adds 16-byte vector v of a pair's rows (wa, wb) dotted with x to
// acc0, acc1 (and x's sums of squares to ss when x is normalized).
template <int M, int EPI>
__device__ __forceinline__ void dgemvDot(const DArgs& a, int v, int tn, const uint4 wa4, const uint4 wb4, float (&acc0)[M],
                                         float (&acc1)[M], float (&ss)[M]) {
  constexpr bool NORM = EPI != EPI_ADD && EPI != EPI_ADDF;
  constexpr bool XF32 = EPI != EPI_ADD;  // x is f32 (xr)
  float wa[8], wb[8];
  unpack8(wa4, wa);
  unpack8(wb4, wb);
  if (NORM) {
    // RMSNorm folded in: dot with x·nw in f32, scaled by each token's
    // 1/rms at the end; the sums of squares ride along.
    float nk[8];
    if (a.nwdt == 0)
      load8((const float*)a.nw + v * 8, nk);
    else
#pragma unroll
      for (int i = 0; i < 8; ++i) nk[i] = nwAt(a.nw, a.nwdt, v * 8 + i);
#pragma unroll
    for (int t = 0; t < M; ++t) {
      if (t < tn) {
        float xv[8];
        load8(a.xr + (long long)t * a.ldxr + v * 8, xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          ss[t] += xv[i] * xv[i];
          const float y = xv[i] * nk[i];
          acc0[t] += wa[i] * y;
          acc1[t] += wb[i] * y;
        }
      }
    }
  } else {
#pragma unroll
    for (int t = 0; t < M; ++t) {
      if (t < tn) {
        float xv[8];
        if (XF32)
          load8(a.xr + (long long)t * a.ldxr + v * 8, xv);
        else
          load8(a.xg + (long long)t * a.ldx + v * 8, xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          acc0[t] += wa[i] * xv[i];
          acc1[t] += wb[i] * xv[i];
        }
      }
    }
  }
}

// dgemvFinish reduces a pair's sums over the lanes and the KS warps that
// split its K, and applies the epilogue. more: the block has another task
// (red is then reused).
template <int M, int EPI, int KS>
__device__ __forceinline__ void dgemvFinish(const DArgs& a, float (&acc0)[M], float (&acc1)[M], float (&ss)[M], bool ok,
                                            int p, int r0, int r1, int tn, bool more) {
  constexpr bool NORM = EPI != EPI_ADD && EPI != EPI_ADDF;
  __shared__ float red[8][3][M];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ks = warp % KS;
#pragma unroll
  for (int t = 0; t < M; ++t) {
    acc0[t] = warpSum(acc0[t]);
    acc1[t] = warpSum(acc1[t]);
    if (NORM) ss[t] = warpSum(ss[t]);
  }
  if (KS > 1) {
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < M; ++t) {
        red[warp][0][t] = acc0[t];
        red[warp][1][t] = acc1[t];
        red[warp][2][t] = ss[t];
      }
    }
    __syncthreads();
    if (ks == 0) {
#pragma unroll
      for (int t = 0; t < M; ++t) {
        float s0 = 0.f, s1 = 0.f, s2 = 0.f;
#pragma unroll
        for (int j = 0; j < KS; ++j) {
          s0 += red[warp + j][0][t];
          s1 += red[warp + j][1][t];
          s2 += red[warp + j][2][t];
        }
        acc0[t] = s0;
        acc1[t] = s1;
        ss[t] = s2;
      }
    }
    if (more) __syncthreads();  // red is reused by the next task
  }
  if (ks == 0 && ok) {
    if (NORM) {
#pragma unroll
      for (int t = 0; t < M; ++t) {
        const float r = 1.0f / sqrtf(ss[t] / (float)a.K + a.eps);
        acc0[t] *= r;
        acc1[t] *= r;
      }
    }
    float b0 = 0.f, b1 = 0.f;
    if (a.bias) {
      b0 = a.bias[r0];
      b1 = a.bias[r1];
    }
#pragma unroll
    for (int t = 0; t < M; ++t) {
      if (t >= tn || lane != t) continue;
      const float s0 = acc0[t] + b0, s1 = acc1[t] + b1;
      float* d = a.dst + (long long)t * a.ldd;
      if (EPI == EPI_STORE) {
        d[r0] = s0;
        if (r1 != r0) d[r1] = s1;
      } else if (EPI == EPI_ADD || EPI == EPI_ADDF) {
        const float* rs = a.res ? a.res + (long long)t * a.ldd : d;
        d[r0] = rs[r0] + s0;
        if (r1 != r0) d[r1] = rs[r1] + s1;
      } else if (EPI == EPI_SILU) {
        const float y = s0 / (1.0f + expf(-s0)) * s1;
        d[p] = y;
        if (a.dst16) a.dst16[(long long)t * a.ldd + p].x = f2bf(y);
      } else {
        const int half = a.hd >> 1, h = p / half, j = p - h * half;
        float n0 = s0, n1 = s1;
        if (h < a.nh + a.nkv) {
          float sn, cs;
          sincosf((float)a.pos[t] * a.invFreq[j], &sn, &cs);
          n0 = s0 * cs - s1 * sn;
          n1 = s1 * cs + s0 * sn;
        }
        d[r0] = n0;
        d[r1] = n1;
        const int slot = a.slots[t];
        if (h >= a.nh && slot >= 0 && slot < a.numSlots) {
          const bool isK = h < a.nh + a.nkv;
          const int hh = isK ? h - a.nh : h - a.nh - a.nkv;
          const long long o = (long long)slot * a.nkv * a.hd + (long long)hh * a.hd + j;
          void* c = isK ? a.kc : a.vc;
          stKV(c, a.kvdt, o, n0);
          stKV(c, a.kvdt, o + half, n1);
        }
      }
    }
  }
}

// dgemvFirstLoads issues a task's first batch of weight loads (rows w0, w1;
// the second batch too with DB), when ok.
template <int U, int S, bool DB>
__device__ __forceinline__ void dgemvFirstLoads(const bf16* w0, const bf16* w1, bool ok, int v0, int nvec, uint4 (&ca)[U],
                                                uint4 (&cb)[U], uint4 (&na)[U], uint4 (&nb)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int v = v0 + u * S, vn = v + U * S;
    if (ok && v < nvec) {
      ca[u] = ldw16(w0 + v * 8);
      cb[u] = ldw16(w1 + v * 8);
    }
    if (DB && ok && vn < nvec) {
      na[u] = ldw16(w0 + vn * 8);
      nb[u] = ldw16(w1 + vn * 8);
    }
  }
}

// dgemv runs the block's tasks blk, blk+stride, ... below tasks (a task is
// 8/KS pairs of rows; the kernels run one task per block). The first two
// batches of a task's weight loads (one in the decode-step kernel) are
// issued before the previous task's reductions and epilogue, so a block
// keeps its weights streaming from one task to the next. STEP (decode-step
// kernel): when bar is set, waiting on the grid barrier (the block arrived
// before these loads) takes the place of griddepcontrol.wait.
template <int M, int EPI, int KS, bool STEP>
__device__ __forceinline__ void dgemv(const DArgs& a, int blk, int stride, int tasks, unsigned* bar) {
  constexpr int U = 4;  // 16-byte loads per row per batch
  // Two batches in flight, except in the decode-step kernel, where the
  // second batch's registers would spill (its tasks are mostly one batch).
  constexpr bool DB = !STEP;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ks = warp % KS;
  const int K = a.K, nvec = K >> 3;
  constexpr int S = 32 * KS;  // a lane's vector stride
  const int v0 = ks * 32 + lane;
  int p = blk * (8 / KS) + warp / KS, P, r0, r1;
  dgemvRows<EPI>(a, p, P, r0, r1);
  bool ok = p < P;
  const bf16* w0 = a.w + (long long)(ok ? r0 : 0) * K;
  const bf16* w1 = a.w + (long long)(ok ? r1 : 0) * K;

  uint4 ca[U], cb[U], na[U], nb[U];
  dgemvFirstLoads<U, S, DB>(w0, w1, ok, v0, nvec, ca, cb, na, nb);
  if (STEP) {
    if (bar) gridWait(bar);
  } else {
    PDL_WAIT();
    PDL_LAUNCH();
  }

  const int tn = min(M, a.T);
  for (;;) {
    float acc0[M], acc1[M], ss[M];
#pragma unroll
    for (int t = 0; t < M; ++t) acc0[t] = acc1[t] = ss[t] = 0.f;
    if (ok) {
      for (int vb = v0; vb < nvec; vb += U * S) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = vb + u * S;
          if (v < nvec) dgemvDot<M, EPI>(a, v, tn, ca[u], cb[u], acc0, acc1, ss);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (DB) {
            ca[u] = na[u];
            cb[u] = nb[u];
          }
          const int vn = vb + ((DB ? 2 : 1) * U + u) * S;
          if (vn < nvec) {
            if (DB) {
              na[u] = ldw16(w0 + vn * 8);
              nb[u] = ldw16(w1 + vn * 8);
            } else {
              ca[u] = ldw16(w0 + vn * 8);
              cb[u] = ldw16(w1 + vn * 8);
            }
          }
        }
      }
    }
    // The next task's first loads, ahead of this one's reductions.
    const int nblk = blk + stride;
    const bool more = nblk < tasks;
    int np = 0, nr0 = 0, nr1 = 0;
    bool nok = false;
    if (more) {
      np = nblk * (8 / KS) + warp / KS;
      int nP;
      dgemvRows<EPI>(a, np, nP, nr0, nr1);
      nok = np < nP;
      dgemvFirstLoads<U, S, DB>(a.w + (long long)(nok ? nr0 : 0) * K, a.w + (long long)(nok ? nr1 : 0) * K, nok, v0,
                                nvec, ca, cb, na, nb);
    }
    dgemvFinish<M, EPI, KS>(a, acc0, acc1, ss, ok, p, r0, r1, tn, more);
    if (!more) return;
    blk = nblk;
    p = np;
    r0 = nr0;
    r1 = nr1;
    ok = nok;
    w0 = a.w + (long long)(ok ? r0 : 0) * K;
    w1 = a.w + (long long)(ok ? r1 : 0) * K;
  }
}

#define INST_DGEMV(M, EPI, NAME, KS)                                                                 \
  extern "C" __global__ void __launch_bounds__(256, 2) dgemv_##NAME##_##M##_##KS(const DArgs a) { \
    dgemv<M, EPI, KS, false>(a, blockIdx.x, 1, blockIdx.x + 1, nullptr);                             \
  }
#define INST_DGEMV_KS(M, EPI, NAME) \
  INST_DGEMV(M, EPI, NAME, 1)       \
  INST_DGEMV(M, EPI, NAME, 2)       \
  INST_DGEMV(M, EPI, NAME, 4)       \
  INST_DGEMV(M, EPI, NAME, 8)
#define INST_DGEMV_M(M)                    \
  INST_DGEMV_KS(M, EPI_STORE, store)      \
  INST_DGEMV_KS(M, EPI_ADD, add)          \
  INST_DGEMV_KS(M, EPI_SILU, silu)        \
  INST_DGEMV_KS(M, EPI_ROPE, rope)
INST_DGEMV_M(1)
INST_DGEMV_M(2)
INST_DGEMV_M(4)

// ---- decode_step: every layer of a one-token step in one launch ----
//
// A one-token step is ~140 small kernels whose boundaries (drain, launch,
// ramp-up) cost about as much as streaming the weights. This kernel runs
// all layers with grid barriers instead: a cooperative launch of every
// resident 256-thread block, five phases per layer (q/k/v with RMSNorm,
// RoPE and the KV write; attention; o plus the residual; gate/up with
// RMSNorm and SiLU; down plus the residual). A GEMV phase is dgemv's block
// tasks spread over the grid; a block arrives at the barrier, issues its
// first task's weight loads, then waits, so the weights stream while the
// previous phase drains. Attention runs a warp per (head, ~8 keys) piece;
// the last piece of a head to finish merges the head's pieces.
//
// Every activation has its own buffer per layer (written once per launch,
// read only after a barrier), so reads may go through L1: no SM can hold
// a stale line of an address that is written while the kernel runs.

struct StepLayer {
  const bf16 *qkv, *o, *gu, *down;
  const float *qkvb, *ob, *gub, *downb;  // null: no bias
  const void *inNorm, *postNorm;         // dtype nwdt
};

struct StepArgs {
  const StepLayer* layers;
  float* h;     // layer 0's input; the last layer's output
  float* acts;  // per layer: h after attention [H], after the MLP [H], q/k/v, attention output, SiLU output
  float *partO, *partML;
  unsigned* bar;  // [0] arrivals, [STEP_EXIT] blocks done, [STEP_GEN] generation, [STEP_SPLITS+h] finished pieces of head h
  const int *pos, *slots, *tokSeq, *bt;
  const float* invFreq;
  char* kv;  // layer l's K cache at kv + 2l·layerBytes, its V cache layerBytes further
  unsigned long long* stamps;  // null, or block 0's clock at each phase's start (6 per layer; benchmarks)
  long long layerBytes, numSlots;
  int numLayers, H, I, nh, nkv, hd, nwdt, maxBlocks, blockSize, numBlocks, ns, ksQKV, ksO, ksGU, ksDown;
  int syncMode;  // the grid barrier's variant (gridMode)
  float eps, scale;
};

template <int EPI, int KS>
__device__ __forceinline__ void stepPhaseKS(const DArgs& a, unsigned* bar) {
  constexpr int per = 8 / KS;
  const int P = (EPI == EPI_SILU || EPI == EPI_ROPE) ? a.N >> 1 : (a.N + 1) >> 1;
  const int tasks = (P + per - 1) / per;
  int blk = blockIdx.x;
  gridArrive(bar);
  if (blk >= tasks) {
    gridWait(bar);
    return;
  }
  dgemv<1, EPI, KS, true>(a, blk, gridDim.x, tasks, bar);
}

// stepPhase runs one GEMV phase; bar (null: none) is the barrier that
// separates it from the previous phase.
template <int EPI>
__device__ __forceinline__ void stepPhase(const DArgs& a, int ks, unsigned* bar) {
  switch (ks) {
    case 1:
      stepPhaseKS<EPI, 1>(a, bar);
      break;
    case 2:
      stepPhaseKS<EPI, 2>(a, bar);
      break;
    case 4:
      stepPhaseKS<EPI, 4>(a, bar);
      break;
    default:
      stepPhaseKS<EPI, 8>(a, bar);
  }
}

// loadRow loads EPL bf16 values at p (EPL·2-byte aligned), packed as they
// are (the unused words stay zero); widenRow unpacks them.
template <int EPL>
__device__ __forceinline__ uint4 loadRow(const bf16* p) {
  uint4 r = make_uint4(0, 0, 0, 0);
  if (EPL == 8) {
    r = *(const uint4*)p;
  } else if (EPL == 4) {
    const uint2 h = *(const uint2*)p;
    r.x = h.x;
    r.y = h.y;
  } else if (EPL == 2) {
    r.x = *(const unsigned*)p;
  } else {
    r.x = p->x;
  }
  return r;
}
template <int EPL>
__device__ __forceinline__ void widenRow(const uint4 r, float* o) {
  const unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int e = 0; e < EPL; ++e) o[e] = __uint_as_float(e & 1 ? w[e >> 1] & 0xffff0000u : w[e >> 1] << 16);
}

// stepAttention is a one-token step's attention: one warp per (head,
// split) piece of up to 16 keys at a time, with no block-wide reductions,
// so a pass over a piece's keys is two rounds of independent loads (the
// block table entries, then all the K and V rows) and a few shuffles. The
// last piece of a head to finish merges the head's pieces (a thread per
// element, independent loads). It is a separate (not inlined) function so
// that it gets its own register allocation. Lane l holds elements
// [l·EPL, l·EPL+EPL) of a head.
//
// A is the kernel's parameter block seen through a pointer: each field
// read is a load, and one in a key's address chain made every key wait
// for its own round trips (a pass cost ~16 of them). So every field is
// read once, up front, and a pass loads all its block table entries before
// any K/V row.
template <int EPL>
__device__ __noinline__ void stepAttention(const StepArgs& A, const char* kcl, const float* q, float* out, int ctx,
                                           const int* bt) {
  constexpr int KW = EPL <= 2 ? 16 : 8;  // keys per pass (more would spill)
  const int nh = A.nh, nkv = A.nkv, D = A.hd, ns = A.ns, bs = A.blockSize, maxB = A.maxBlocks, numB = A.numBlocks;
  const float scale = A.scale;
  float* const partO = A.partO;
  float* const partML = A.partML;
  unsigned* const split0 = A.bar + STEP_SPLITS;
  const int lane = threadIdx.x & 31, G = nh / nkv;
  const bool dOK = lane * EPL < D;
  const int per = (ctx + ns - 1) / ns;
  const bf16* kc = (const bf16*)kcl;
  const bf16* vc = (const bf16*)(kcl + A.layerBytes);
  const long long kvRow = (long long)nkv * D;
  for (int it = blockIdx.x * 8 + (threadIdx.x >> 5); it < nh * ns; it += gridDim.x * 8) {
    const int h = it % nh, split = it / nh, kvh = h / G;
    const int k0 = split * per, k1 = min(ctx, k0 + per);
    float qv[EPL], acc[EPL];
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      qv[e] = dOK ? q[(long long)h * D + lane * EPL + e] * scale : 0.f;
      acc[e] = 0.f;
    }
    float m = NEG_INF, l = 0.f;
    for (int c0 = k0; c0 < k1; c0 += KW) {
      uint4 kr[KW], vr[KW];  // packed: two keys' floats would not fit in registers
      float sc[KW];
      unsigned valid = 0;  // keys in the piece with a live KV block
      int blk[KW];
#pragma unroll
      for (int j = 0; j < KW; ++j) {
        const int p = c0 + j, bi = p / bs;
        blk[j] = (p < k1 && bi < maxB) ? bt[bi] : -1;
      }
#pragma unroll
      for (int j = 0; j < KW; ++j) {
        const int p = c0 + j;
        if (blk[j] >= numB) blk[j] = -1;
        if (blk[j] >= 0) valid |= 1u << j;
        const long long row = ((long long)blk[j] * bs + (p - (p / bs) * bs)) * kvRow + (long long)kvh * D;
        kr[j] = vr[j] = make_uint4(0, 0, 0, 0);
        if (blk[j] >= 0 && dOK) {
          kr[j] = loadRow<EPL>(kc + row + lane * EPL);
          vr[j] = loadRow<EPL>(vc + row + lane * EPL);
        }
      }
#pragma unroll
      for (int j = 0; j < KW; ++j) {
        float kf[EPL], d = 0.f;
        widenRow<EPL>(kr[j], kf);
#pragma unroll
        for (int e = 0; e < EPL; ++e) d += qv[e] * kf[e];
        sc[j] = d;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int j = 0; j < KW; ++j) sc[j] += __shfl_xor_sync(0xffffffffu, sc[j], o);
      float mc = m;
#pragma unroll
      for (int j = 0; j < KW; ++j)
        if (valid >> j & 1) mc = fmaxf(mc, sc[j]);
      if (mc == NEG_INF) continue;  // no live keys yet
      const float f = expf(m - mc);  // 0 on the first live pass (m = -inf)
      l *= f;
#pragma unroll
      for (int e = 0; e < EPL; ++e) acc[e] *= f;
#pragma unroll
      for (int j = 0; j < KW; ++j) {
        const float pj = (valid >> j & 1) ? expf(sc[j] - mc) : 0.f;
        float vf[EPL];
        widenRow<EPL>(vr[j], vf);
        l += pj;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[e] += pj * vf[e];
      }
      m = mc;
    }
    if (ns == 1) {
      if (dOK)
#pragma unroll
        for (int e = 0; e < EPL; ++e) out[(long long)h * D + lane * EPL + e] = l > 0.f ? acc[e] / l : 0.f;
      continue;
    }
    const long long pi = (long long)h * ns + split;
    if (dOK)
#pragma unroll
      for (int e = 0; e < EPL; ++e) partO[pi * D + lane * EPL + e] = acc[e];
    if (lane == 0) {
      partML[2 * pi] = m;
      partML[2 * pi + 1] = l;
    }
    // The last piece of head h merges its pieces. The partials and the
    // counter are rewritten by every layer: coherent loads. Lane 0's
    // release count publishes the warp's partials, which __syncwarp orders
    // before it; the last piece acquires the other pieces' by an acquire
    // load of the count (it reads the last add of the release sequence
    // that every piece's add continues), which costs less than a fence
    // (gridMode 4 keeps the fence, for the benchmarks).
    __syncwarp();
    unsigned last = 0;
    if (lane == 0) {
      last = addRelease(split0 + h, 1u) == (unsigned)ns - 1;
      if (last) {
        if (gridMode == 3)
          ldAcquire(split0 + h);
        else
          fenceAcqRel();
      }
    }
    if (!__shfl_sync(0xffffffffu, last, 0)) continue;
    __syncwarp();  // lane 0's acquire, before every lane's loads
    // Lane s holds piece s's (m, l); ns <= 32. Loads go out in batches of
    // eight pieces before any is used: each costs an L2 round trip.
    const long long i0 = (long long)h * ns;
    const float ms = lane < ns ? __ldcg(partML + 2 * (i0 + lane)) : NEG_INF;
    const float ls = lane < ns ? __ldcg(partML + 2 * (i0 + lane) + 1) : 0.f;
    float M = ms;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    const float fs = ms == NEG_INF ? 0.f : expf(ms - M);
    const float L = warpSum(ls * fs);
    float o[EPL];
#pragma unroll
    for (int e = 0; e < EPL; ++e) o[e] = 0.f;
    for (int b0 = 0; b0 < ns; b0 += 8) {
      float pv[8][EPL];
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < EPL; ++e)
          pv[j][e] = (b0 + j < ns && dOK) ? __ldcg(partO + (i0 + b0 + j) * D + lane * EPL + e) : 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float f = __shfl_sync(0xffffffffu, fs, (b0 + j) & 31);
#pragma unroll
        for (int e = 0; e < EPL; ++e) o[e] += pv[j][e] * f;
      }
    }
    if (dOK)
#pragma unroll
      for (int e = 0; e < EPL; ++e) out[(long long)h * D + lane * EPL + e] = L > 0.f ? o[e] / L : 0.f;
    if (lane == 0) split0[h] = 0;
  }
}

template <int EPL>
__device__ __forceinline__ void decodeStep(const StepArgs& A) {
  const int qkvN = (A.nh + 2 * A.nkv) * A.hd, qd = A.nh * A.hd;
  const long long per = 2LL * A.H + qkvN + qd + A.I;  // a layer's activations
  const float* hin = A.h;
  // The token's context and block table row, read once (uploaded before the launch).
  const int ctx = A.pos[0] + 1;
  const int* bt = A.bt + (long long)A.tokSeq[0] * A.maxBlocks;
  gridStart(A.syncMode);
  for (int l = 0; l < A.numLayers; ++l) {
    // Fields of the layer's table row are read where they are used: held
    // across the phases they would take registers from the GEMVs.
    const StepLayer& L = A.layers[l];
    char* kcl = A.kv + 2LL * l * A.layerBytes;
    float* hmid = A.acts + l * per;
    float* hout = l == A.numLayers - 1 ? A.h : hmid + A.H;
    float* q = hmid + 2 * A.H;
    float* att = q + qkvN;
    float* act = att + qd;
    const bool stamp = A.stamps && blockIdx.x == 0 && threadIdx.x == 0;
#define STAMP(k) \
  if (stamp) A.stamps[6 * l + (k)] = clock64()
    STAMP(0);

    DArgs a = {};
    a.T = 1;
    a.eps = A.eps;
    a.nwdt = A.nwdt;
    a.w = L.qkv;
    a.bias = L.qkvb;
    a.xr = hin;
    a.ldxr = A.H;
    a.nw = L.inNorm;
    a.dst = q;
    a.ldd = qkvN;
    a.N = qkvN;
    a.K = A.H;
    a.pos = A.pos;
    a.invFreq = A.invFreq;
    a.kc = kcl;
    a.vc = kcl + A.layerBytes;
    a.kvdt = 1;
    a.slots = A.slots;
    a.numSlots = A.numSlots;
    a.nh = A.nh;
    a.nkv = A.nkv;
    a.hd = A.hd;
    // The embedding kernel wrote layer 0's input before this launch.
    stepPhase<EPI_ROPE>(a, A.ksQKV, l > 0 ? A.bar : nullptr);
    STAMP(1);
    gridSync(A.bar);
    STAMP(2);
    stepAttention<EPL>(A, kcl, q, att, ctx, bt);
    STAMP(3);

    DArgs o = {};
    o.T = 1;
    o.w = L.o;
    o.bias = L.ob;
    o.xr = att;
    o.ldxr = qd;
    o.res = hin;
    o.dst = hmid;
    o.ldd = A.H;
    o.N = A.H;
    o.K = qd;
    stepPhase<EPI_ADDF>(o, A.ksO, A.bar);

    DArgs g = {};
    g.T = 1;
    g.eps = A.eps;
    g.nwdt = A.nwdt;
    g.w = L.gu;
    g.bias = L.gub;
    g.xr = hmid;
    g.ldxr = A.H;
    g.nw = L.postNorm;
    g.dst = act;
    g.ldd = A.I;
    g.N = 2 * A.I;
    g.K = A.H;
    STAMP(4);
    stepPhase<EPI_SILU>(g, A.ksGU, A.bar);
    STAMP(5);

    DArgs d = {};
    d.T = 1;
    d.w = L.down;
    d.bias = L.downb;
    d.xr = act;
    d.ldxr = A.I;
    d.res = hmid;
    d.dst = hout;
    d.ldd = A.H;
    d.N = A.H;
    d.K = A.I;
    stepPhase<EPI_ADDF>(d, A.ksDown, A.bar);
    hin = hout;
  }
  gridExit(A.bar);
#undef STAMP
}

// A is a __grid_constant__ so that stepAttention (not inlined) can take
// its address without the kernel copying it to local memory, where every
// read of a field would be a local load.
#define INST_STEP(EPL)                                                                                \
  extern "C" __global__ void __launch_bounds__(256, 2) decode_step_##EPL(const __grid_constant__ StepArgs A) { \
    decodeStep<EPL>(A);                                                                                \
  }
INST_STEP(1)
INST_STEP(2)
INST_STEP(4)
INST_STEP(8)
