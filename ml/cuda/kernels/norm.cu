// ---- casts (activations to the GEMM input dtype) ----

#if KUNIT(0)
extern "C" __global__ void cast_f32_bf16(bf16* dst, const float* src, long long n) {
  PDL_ENTRY();
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    dst[i].x = f2bf(src[i]);
}
#endif
// split_f32_bf16 writes x as two bf16 planes, hi = bf16(x) in dst[0, n)
// and lo = bf16(x - hi) in dst[n, 2n), for splitGemm; add_halves sums the
// two halves of its product.
#if KUNIT(0)
extern "C" __global__ void split_f32_bf16(bf16* dst, const float* src, long long n) {
  PDL_ENTRY();
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const float v = src[i];
    bf16 hi;
    hi.x = f2bf(v);
    dst[i] = hi;
    dst[n + i].x = f2bf(v - tof(hi));
  }
}
#endif
#if KUNIT(0)
extern "C" __global__ void add_halves(float* dst, const float* src, long long n) {
  PDL_ENTRY();
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    dst[i] = src[i] + src[n + i];
}
#endif
#if KUNIT(0)
extern "C" __global__ void cast_f32_f16(f16* dst, const float* src, long long n) {
  PDL_ENTRY();
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    dst[i].x = f2h(src[i]);
}
#endif

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
// bf16 copy of dst for the GEMM that usually follows, and dst may be null
// where that GEMM is its only reader ----

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
    if (dst) dst[off + d] = y;
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
    if (dst) dst[off + d] = y;
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

#if KUNIT(0)
INST_W(float, f32)
INST_W(bf16, bf16)
INST_W(f16, f16)
#endif
