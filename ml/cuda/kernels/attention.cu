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

// flashServes is the rule by which the flash kernel takes a sequence's
// rows of its tile (nSame of the tile's nValid rows): when they are many,
// the tile's only ones, or part of a chunk that goes on past the tile's
// edge (spans: a prompt's rows, whose keys the neighbouring tiles walk
// anyway). The per-token kernel serves the rest: a few decode tokens of
// many sequences would make the flash block run one pass over each one's
// keys in turn. (Left to it, a prompt's last few rows had one block walk
// the whole context for them, after every other block was done.)
// flashLeftPlan (ops.go) applies the same rule on the host.
#define FA_MIN_ROWS 8
__device__ __forceinline__ bool flashServes(int nSame, int nValid, bool spans) {
  return nSame >= FA_MIN_ROWS || nSame == nValid || spans;
}

// tileEdgeSeqs gives the sequences of the tokens just before and just
// after the tile of tokens [t0, t0+n) of a step of T (-1: none).
__device__ __forceinline__ int2 tileEdgeSeqs(const int* tokenSeq, int t0, int n, int T) {
  return make_int2(t0 > 0 ? tokenSeq[t0 - 1] : -1, t0 + n < T ? tokenSeq[t0 + n] : -1);
}

// leftToFlash reports whether the flash kernel, which runs too where
// flashRows > 0 (flash.cu), serves token t (of sequence seq): by the rule
// it applies to its tile of flashRows tokens (its form's FA_BM or FW_BM
// rows over G: at most 128, a thread of the block a token). Every thread
// of the block calls it.
__device__ __forceinline__ bool leftToFlash(const int* tokenSeq, int t, int seq, int flashRows) {
  if (flashRows <= 0) return false;
  const int t0 = t / flashRows * flashRows, r = threadIdx.x;
  const bool valid = r < flashRows && t0 + r < (int)gridDim.y;
  const int nValid = __syncthreads_count(valid);
  const int nSame = __syncthreads_count(valid && tokenSeq[t0 + r] == seq);
  const int2 edge = tileEdgeSeqs(tokenSeq, t0, flashRows, gridDim.y);
  return flashServes(nSame, nValid, edge.x == seq || edge.y == seq);
}

template <typename KV, int EPL>
__device__ void attention(float* out, float* partO, float* partML, const float* q, const KV* kc, const KV* vc,
                          const int* tokenSeq, const int* positions, const int* blockTables, int maxBlocks,
                          int blockSize, int numBlocks, int H, int KVH, int D, float scale, int numSplits,
                          int qStride, int outStride, bf16* out16, int window, int flashRows) {
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
  if (leftToFlash(tokenSeq, t, seq, flashRows)) return;
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
      int D, float scale, int numSplits, int qStride, int outStride, bf16* out16, int window, int flashRows) {  \
    PDL_ENTRY();                                                                                                \
    attention<KV, EPL>(out, partO, partML, q, kc, vc, tokenSeq, positions, blockTables, maxBlocks, blockSize,   \
                       numBlocks, H, KVH, D, scale, numSplits, qStride, outStride, out16, window, flashRows);   \
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

// One unit per cache dtype: each is a long compile, and the FP8 one
// (unit 21, with the FP8 weight kernels) compiles only when a model asks.
#if KUNIT(1)
INST_KV(float, f32)
#endif
#if KUNIT(20)
INST_KV(bf16, bf16)
#endif
#if KUNIT(21)
INST_KV(f8e4m3, f8)
#endif

// attn_combine merges the numSplits partials of each (token, head). mUnit
// turns a difference of their maxima into natural-log units: 1 for
// attention's, ln 2 for attn_tc's (base 2). Grid (H, T), block >= 32
// threads.
#if KUNIT(0)
extern "C" __global__ void attn_combine(float* out, const float* partO, const float* partML, int H, int D,
                                        int numSplits, int outStride, bf16* out16, float mUnit) {
  PDL_ENTRY();
  const int h = blockIdx.x, t = blockIdx.y;
  const long long i0 = ((long long)t * H + h) * numSplits;
  float M = NEG_INF;
  for (int s = 0; s < numSplits; ++s) M = fmaxf(M, partML[2 * (i0 + s)]);
  float L = 0.f;
  for (int s = 0; s < numSplits; ++s) {
    const float ms = partML[2 * (i0 + s)];
    if (ms != NEG_INF) L += partML[2 * (i0 + s) + 1] * expf((ms - M) * mUnit);
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < numSplits; ++s) {
      const float ms = partML[2 * (i0 + s)];
      if (ms != NEG_INF) o += partO[(i0 + s) * D + d] * expf((ms - M) * mUnit);
    }
    const long long oi = (long long)t * outStride + (long long)h * D + d;
    const float y = L > 0.f ? o / L : 0.f;
    out[oi] = y;
    if (out16) out16[oi].x = f2bf(y);
  }
}
#endif
