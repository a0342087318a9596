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
#define EPI_ADDF 4  // EPI_ADD with f32 x (xr, not normalized)


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
  void* kc;           // layer's K cache, dtype kvdt (0 f32, 1 bf16, 2 FP8 E4M3 with scale 1)
  void* vc;
  const int* slots;
  const float* res;  // EPI_ADD/ADDF: dst = res + acc (null: dst += acc)
  const float* wscale;  // FP8 weights (F8W): each row's scale
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
  else if (dt == 2)
    stf((f8e4m3*)c + i, v);
  else
    ((float*)c)[i] = v;
}

// A dgemv vector is 8 weights of a row: 16 bytes of bf16, or 8 bytes of
// FP8 codes (F8W, in the low half of the uint4) widened with f8x8.
template <bool F8W>
__device__ __forceinline__ uint4 ldwv(const unsigned char* p) {
  if (!F8W) return ldw16(p);
  uint4 r = make_uint4(0, 0, 0, 0);
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
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

// dgemvDot8 adds eight weights of a pair's rows (wa, wb) at x's columns
// c.. dotted with x (see dgemvDot).
template <int M, int EPI, bool XS>
__device__ __forceinline__ void dgemvDot8(const DArgs& a, const float* xs, int c, int tn, const float (&wa)[8],
                                          const float (&wb)[8], float (&acc0)[M], float (&acc1)[M], float (&ss)[M]) {
  constexpr bool NORM = EPI != EPI_ADD && EPI != EPI_ADDF;
  constexpr bool XF32 = EPI != EPI_ADD;  // x is f32 (xr)
  if (XS) {
    // x·nw from the block's copy (dgemvNormX); one token.
    float xv[8];
    load8(xs + c, xv);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      acc0[0] += wa[i] * xv[i];
      acc1[0] += wb[i] * xv[i];
    }
  } else if (NORM) {
    // RMSNorm folded in: dot with x·nw in f32, scaled by each token's
    // 1/rms at the end; the sums of squares ride along.
    float nk[8];
    if (a.nwdt == 0)
      load8((const float*)a.nw + c, nk);
    else
#pragma unroll
      for (int i = 0; i < 8; ++i) nk[i] = nwAt(a.nw, a.nwdt, c + i);
#pragma unroll
    for (int t = 0; t < M; ++t) {
      if (t < tn) {
        float xv[8];
        load8(a.xr + (long long)t * a.ldxr + c, xv);
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
          load8(a.xr + (long long)t * a.ldxr + c, xv);
        else
          load8(a.xg + (long long)t * a.ldx + c, xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          acc0[t] += wa[i] * xv[i];
          acc1[t] += wb[i] * xv[i];
        }
      }
    }
  }
}

// dgemvDot adds vector v of a pair's rows (wa4, wb4: eight weights each)
// dotted with x to acc0, acc1 (and x's sums of squares to ss when x is
// normalized).
template <int M, int EPI, bool F8W, bool XS>
__device__ __forceinline__ void dgemvDot(const DArgs& a, const float* xs, int v, int tn, const uint4 wa4, const uint4 wb4,
                                         float (&acc0)[M], float (&acc1)[M], float (&ss)[M]) {
  float wa[8], wb[8];
  if (F8W) {
    f8x8(wa4.x, wa4.y, wa);
    f8x8(wb4.x, wb4.y, wb);
  } else {
    unpack8(wa4, wa);
    unpack8(wb4, wb);
  }
  dgemvDot8<M, EPI, XS>(a, xs, v * 8, tn, wa, wb, acc0, acc1, ss);
}

// dgemvNormX is the decode-step kernel's prologue of a GEMV over
// RMSNorm(x)·nw of one token: the block writes x·nw to xs (K floats of
// dynamic shared memory) and its warps' sums of squares of x to dgemvSS
// (dgemvRinv reads them where a pair's sums are scaled, so no register
// holds them across the weight loop). Each pair of rows would otherwise
// load x and nw and redo the sums of squares and the products for itself,
// work that held the normalized phases (q/k/v, gate/up) below the
// bandwidth the others reach, with FP8 weights most.
__shared__ float dgemvSS[8];
__device__ __forceinline__ void dgemvNormX(const DArgs& a, float* xs) {
  __syncthreads();  // the block's readers of xs and dgemvSS in its previous GEMV are done
  float ss = 0.f;
  for (int k = threadIdx.x * 4; k < a.K; k += blockDim.x * 4) {
    const float4 x = *(const float4*)(a.xr + k);
    float w[4];
    if (a.nwdt == 0) {
      const float4 n = *(const float4*)((const float*)a.nw + k);
      w[0] = n.x, w[1] = n.y, w[2] = n.z, w[3] = n.w;
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) w[i] = nwAt(a.nw, a.nwdt, k + i);
    }
    ss += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
    *(float4*)(xs + k) = make_float4(x.x * w[0], x.y * w[1], x.z * w[2], x.w * w[3]);
  }
  ss = warpSum(ss);
  if ((threadIdx.x & 31) == 0) dgemvSS[threadIdx.x >> 5] = ss;
  __syncthreads();
}

// dgemvRinv is 1/rms(x) of dgemvNormX's x.
__device__ __forceinline__ float dgemvRinv(const DArgs& a) {
  float t = 0.f;
#pragma unroll
  for (int w = 0; w < 8; ++w) t += dgemvSS[w];
  return 1.0f / sqrtf(t / (float)a.K + a.eps);
}

// dgemvFinish reduces a pair's sums over the lanes and the KS warps that
// split its K, and applies the epilogue. more: the block has another task
// (red is then reused).
template <int M, int EPI, int KS, bool XS>
__device__ __forceinline__ void dgemvFinish(const DArgs& a, float (&acc0)[M], float (&acc1)[M], float (&ss)[M], bool ok,
                                            int p, int r0, int r1, int tn, bool more) {
  constexpr bool NORM = EPI != EPI_ADD && EPI != EPI_ADDF && !XS;  // XS: x·nw came normed but for 1/rms (dgemvRinv)
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
    if (a.wscale) {
      const float s0 = a.wscale[r0], s1 = a.wscale[r1];
#pragma unroll
      for (int t = 0; t < M; ++t) {
        acc0[t] *= s0;
        acc1[t] *= s1;
      }
    }
    if (NORM) {
#pragma unroll
      for (int t = 0; t < M; ++t) {
        const float r = 1.0f / sqrtf(ss[t] / (float)a.K + a.eps);
        acc0[t] *= r;
        acc1[t] *= r;
      }
    } else if (XS) {
      const float r = dgemvRinv(a);
      acc0[0] *= r;
      acc1[0] *= r;
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
          double snd, csd;  // the angle in double, as rope_kv forms it
          sincos((double)a.pos[t] * (double)a.invFreq[j], &snd, &csd);
          const float sn = (float)snd, cs = (float)csd;
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
template <int U, int S, bool DB, bool F8W>
__device__ __forceinline__ void dgemvFirstLoads(const unsigned char* w0, const unsigned char* w1, bool ok, int v0, int nvec,
                                                uint4 (&ca)[U], uint4 (&cb)[U], uint4 (&na)[U], uint4 (&nb)[U]) {
  constexpr int VB = F8W ? 8 : 16;  // bytes per vector
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int v = v0 + u * S, vn = v + U * S;
    if (ok && v < nvec) {
      ca[u] = ldwv<F8W>(w0 + v * VB);
      cb[u] = ldwv<F8W>(w1 + v * VB);
    }
    if (DB && ok && vn < nvec) {
      na[u] = ldwv<F8W>(w0 + vn * VB);
      nb[u] = ldwv<F8W>(w1 + vn * VB);
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
template <int M, int EPI, int KS, bool STEP, bool F8W = false>
__device__ __forceinline__ void dgemv(const DArgs& a, int blk, int stride, int tasks, unsigned* bar) {
  // Vector loads per row per batch (eight for FP8, as many bytes in flight
  // as bf16's four, made the FP8 step slower on an H100).
  constexpr int U = 4;
  constexpr int VB = F8W ? 8 : 16, WB = F8W ? 1 : 2;  // bytes per vector, per weight
  const unsigned char* const wBase = (const unsigned char*)a.w;
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
  const unsigned char* w0 = wBase + (long long)(ok ? r0 : 0) * K * WB;
  const unsigned char* w1 = wBase + (long long)(ok ? r1 : 0) * K * WB;

  uint4 ca[U], cb[U], na[U], nb[U];
  dgemvFirstLoads<U, S, DB, F8W>(w0, w1, ok, v0, nvec, ca, cb, na, nb);
  // The decode-step kernel's normalized GEMVs read x·nw from shared memory.
  constexpr bool XS = STEP && EPI != EPI_ADD && EPI != EPI_ADDF;
  float* xs = nullptr;
  if constexpr (XS) {
    extern __shared__ float4 dgemvXs[];
    xs = (float*)dgemvXs;
  }
  if (STEP) {
    if (bar) gridWait(bar);
    if constexpr (XS) dgemvNormX(a, xs);
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
          if (v < nvec) dgemvDot<M, EPI, F8W, XS>(a, xs, v, tn, ca[u], cb[u], acc0, acc1, ss);
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
              na[u] = ldwv<F8W>(w0 + vn * VB);
              nb[u] = ldwv<F8W>(w1 + vn * VB);
            } else {
              ca[u] = ldwv<F8W>(w0 + vn * VB);
              cb[u] = ldwv<F8W>(w1 + vn * VB);
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
      dgemvFirstLoads<U, S, DB, F8W>(wBase + (long long)(nok ? nr0 : 0) * K * WB, wBase + (long long)(nok ? nr1 : 0) * K * WB,
                                     nok, v0, nvec, ca, cb, na, nb);
    }
    dgemvFinish<M, EPI, KS, XS>(a, acc0, acc1, ss, ok, p, r0, r1, tn, more);
    if (!more) return;
    blk = nblk;
    p = np;
    r0 = nr0;
    r1 = nr1;
    ok = nok;
    w0 = wBase + (long long)(ok ? r0 : 0) * K * WB;
    w1 = wBase + (long long)(ok ? r1 : 0) * K * WB;
  }
}

#define INST_DGEMV(M, EPI, NAME, KS)                                                                 \
  extern "C" __global__ void __launch_bounds__(256, 2) dgemv_##NAME##_##M##_##KS(const DArgs a) { \
    dgemv<M, EPI, KS, false>(a, blockIdx.x, 1, blockIdx.x + 1, nullptr);                             \
  }
#define INST_DGEMV_F8(M, EPI, NAME, KS)                                                                 \
  extern "C" __global__ void __launch_bounds__(256, 2) dgemv_##NAME##_f8_##M##_##KS(const DArgs a) { \
    dgemv<M, EPI, KS, false, true>(a, blockIdx.x, 1, blockIdx.x + 1, nullptr);                          \
  }
#define INST_DGEMV_KS(M, EPI, NAME) \
  INST_DGEMV(M, EPI, NAME, 1)       \
  INST_DGEMV(M, EPI, NAME, 2)       \
  INST_DGEMV(M, EPI, NAME, 4)       \
  INST_DGEMV(M, EPI, NAME, 8)
#define INST_DGEMV_F8_KS(M, EPI, NAME) \
  INST_DGEMV_F8(M, EPI, NAME, 1)       \
  INST_DGEMV_F8(M, EPI, NAME, 2)       \
  INST_DGEMV_F8(M, EPI, NAME, 4)       \
  INST_DGEMV_F8(M, EPI, NAME, 8)
#define INST_DGEMV_F8_ALL(M)               \
  INST_DGEMV_F8_KS(M, EPI_STORE, store)    \
  INST_DGEMV_F8_KS(M, EPI_ADD, add)        \
  INST_DGEMV_F8_KS(M, EPI_ADDF, addf)      \
  INST_DGEMV_F8_KS(M, EPI_SILU, silu)      \
  INST_DGEMV_F8_KS(M, EPI_ROPE, rope)
// Instantiated in kernel units (KUNIT) small enough to compile in parallel.
#define INST_DGEMV_A(M)                 \
  INST_DGEMV_KS(M, EPI_STORE, store)    \
  INST_DGEMV_KS(M, EPI_ADD, add)        \
  INST_DGEMV_KS(M, EPI_ADDF, addf)
#define INST_DGEMV_B(M)                 \
  INST_DGEMV_KS(M, EPI_SILU, silu)      \
  INST_DGEMV_KS(M, EPI_ROPE, rope)
#if KUNIT(4)
INST_DGEMV_A(1)
#endif
#if KUNIT(23)
INST_DGEMV_B(1)
#endif
#if KUNIT(5)
INST_DGEMV_A(2)
#endif
#if KUNIT(6)
INST_DGEMV_B(2)
#endif
#if KUNIT(7)
INST_DGEMV_KS(4, EPI_STORE, store)
INST_DGEMV_KS(4, EPI_ADD, add)
#endif
#if KUNIT(33)
INST_DGEMV_KS(4, EPI_ADDF, addf)
#endif
#if KUNIT(8)
INST_DGEMV_KS(4, EPI_SILU, silu)
#endif
#if KUNIT(24)
INST_DGEMV_KS(4, EPI_ROPE, rope)
#endif
// FP8 weights (dgemv_<epilogue>_f8_<M>_<KS>).
#if KUNIT(13)
INST_DGEMV_F8_ALL(1)
#endif
#if KUNIT(14)
INST_DGEMV_F8_ALL(2)
#endif
#if KUNIT(15)
INST_DGEMV_F8_ALL(4)
#endif
