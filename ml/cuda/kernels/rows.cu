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
    // The angle in double, as the CPU forms it: a float32 product loses
    // ~ulp(pos) radians, which moves logprobs past the float32 bar at a
    // few thousand positions.
    double sd, cd;
    sincos((double)p * (double)invFreq[j], &sd, &cd);
    const float s = (float)sd, c = (float)cd;
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
#if KUNIT(0)
INST_ROPE(float, f32)
INST_ROPE(bf16, bf16)
INST_ROPE(f8e4m3, f8)
#endif

// qknorm_rope_kv is rope_kv for models with per-head q/k RMSNorm (Qwen3):
// qkv [T, (nh+nkv+nkv)·hd] holds q's heads, k's, then v's; each q and k
// head gets the bias (null: none), is RMS-normed with qn or kn, then
// rotated, in place; k and v (with its bias) are stored into the cache at
// slots[t]. Grid (T), a warp per head.
template <typename KV>
__device__ void qknorm_rope_kv(float* qkv, int stride, int nh, int nkv, int hd, const int* pos, const float* invFreq,
                               const float* qn, const float* kn, float eps, const float* bias, KV* kc, KV* vc,
                               const int* slots, long long numSlots) {
  const int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int half = hd / 2;
  const double p = (double)pos[t];
  const int slot = slots[t];
  const bool store = slot >= 0 && slot < numSlots;
  float* row = qkv + (long long)t * stride;
  for (int h = warp; h < nh + nkv; h += blockDim.x >> 5) {
    const bool isK = h >= nh;
    float* hp = row + h * hd;
    const float* bp = bias ? bias + h * hd : nullptr;
    const float* nw = isK ? kn : qn;
    float ss = 0.f;
    for (int d = lane; d < hd; d += 32) {
      const float v = hp[d] + (bp ? bp[d] : 0.f);
      ss += v * v;
    }
    ss = warpSum(ss);
    const float r = 1.0f / sqrtf(ss / (float)hd + eps);
    const int kh = h - nh;
    const long long o = (long long)slot * nkv * hd + (long long)kh * hd;
    for (int j = lane; j < half; j += 32) {
      float a = hp[j], b = hp[j + half];
      if (bp) {
        a += bp[j];
        b += bp[j + half];
      }
      a = (a * r) * nw[j];
      b = (b * r) * nw[j + half];
      // The angle in double, as rope_kv forms it.
      double sd, cd;
      sincos(p * (double)invFreq[j], &sd, &cd);
      const float s = (float)sd, c = (float)cd;
      const float na = a * c - b * s, nb = b * c + a * s;
      hp[j] = na;
      hp[j + half] = nb;
      if (isK && store) {
        stf(kc + o + j, na);
        stf(kc + o + j + half, nb);
      }
    }
    if (isK && store) {
      const float* vr = row + (nh + nkv + kh) * hd;
      const float* vb = bias ? bias + (nh + nkv + kh) * hd : nullptr;
      for (int d = lane; d < hd; d += 32) stf(vc + o + d, vr[d] + (vb ? vb[d] : 0.f));
    }
  }
}

#define INST_QKNORM_ROPE(KV, S)                                                                                   \
  extern "C" __global__ void qknorm_rope_kv_##S(float* qkv, int stride, int nh, int nkv, int hd, const int* pos, \
                                                const float* invFreq, const float* qn, const float* kn, float eps, \
                                                const float* bias, KV* kc, KV* vc, const int* slots,              \
                                                long long numSlots) {                                             \
    PDL_ENTRY();                                                                                                  \
    qknorm_rope_kv<KV>(qkv, stride, nh, nkv, hd, pos, invFreq, qn, kn, eps, bias, kc, vc, slots, numSlots);       \
  }
#if KUNIT(0)
INST_QKNORM_ROPE(float, f32)
INST_QKNORM_ROPE(bf16, bf16)
INST_QKNORM_ROPE(f8e4m3, f8)
#endif

// ---- SiLU-and-mul: dst[t, i] = silu(gu[t, i]) * gu[t, I+i] ----

#if KUNIT(0)
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
#endif

// ---- SiLU-and-mul of a bf16 gate/up product, into bf16 (rounded
// activations): dst16[t, i] = bf16(silu(gu[t, i]) * gu[t, I+i]), eight
// values a thread (I a multiple of 8); n8 = T·I/8 ----

#if KUNIT(0)
extern "C" __global__ void silu_mul16(bf16* dst16, const bf16* gu, int I, long long n8) {
  PDL_ENTRY();
  const int I8 = I / 8;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n8; idx += (long long)gridDim.x * blockDim.x) {
    const long long t = idx / I8;
    const int i = (int)(idx - t * I8) * 8;
    const uint4 g = *(const uint4*)(gu + t * 2 * I + i);
    const uint4 u = *(const uint4*)(gu + t * 2 * I + I + i);
    const unsigned gs[4] = {g.x, g.y, g.z, g.w}, us[4] = {u.x, u.y, u.z, u.w};
    unsigned o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float g0 = __uint_as_float(gs[k] << 16), g1 = __uint_as_float(gs[k] & 0xffff0000u);
      const float u0 = __uint_as_float(us[k] << 16), u1 = __uint_as_float(us[k] & 0xffff0000u);
      o[k] = (unsigned)f2bf(g0 / (1.0f + expf(-g0)) * u0) | ((unsigned)f2bf(g1 / (1.0f + expf(-g1)) * u1) << 16);
    }
    *(uint4*)(dst16 + t * I + i) = make_uint4(o[0], o[1], o[2], o[3]);
  }
}
#endif

// ---- GatherRows: dst[r] = src[idx[r]] (zeros when out of range) ----

#if KUNIT(0)
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
#endif

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

#if KUNIT(0)
// allowed (null: every token) holds a bitset of words words per row: a
// token whose bit is clear counts as -inf, as a grammar mask leaves it.
extern "C" __global__ void argmax_rows(int* out, const float* x, int N, float* partV, int* partI, unsigned* counter,
                                       const unsigned* allowed, int words) {
  PDL_ENTRY();
  const int row = blockIdx.y, nb = gridDim.x;
  const float* xr = x + (long long)row * N;
  const unsigned* ar = allowed ? allowed + (long long)row * words : nullptr;
  const int per = (N + nb - 1) / nb;
  const int i0 = blockIdx.x * per, i1 = min(N, i0 + per);
  float best = NEG_INF;
  int bi = 0x7fffffff;
  for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x)
    amax(best, bi, ar && !((ar[i >> 5] >> (i & 31)) & 1u) ? NEG_INF : xr[i], i);
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
#endif

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
