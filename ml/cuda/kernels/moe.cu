// Per-head norms and mixture-of-experts kernels (ml.Backend's RMSNormHeads,
// TopKSoftmax, MatMulExperts, ScatterAdd). Compiled after the other files,
// whose helpers (tof, warpSum, blockSum, PDL_ENTRY: common.cu) they use.

// ---- rmsnorm_heads: each hd-wide head of x[T, nh*hd] normed in place ----
// Grid (T*nh), block a multiple of 32 (blockSum).
#if KUNIT(0)
extern "C" __global__ void rmsnorm_heads(float* x, const float* w, int hd, float eps) {
  PDL_ENTRY();
  float* xr = x + (long long)blockIdx.x * hd;
  float ss = 0.f;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) ss += xr[d] * xr[d];
  ss = blockSum(ss);
  const float r = 1.0f / sqrtf(ss / (float)hd + eps);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) xr[d] = (xr[d] * r) * w[d];
}
#endif

// ---- topk_softmax: softmax over E experts, the k largest (lower index on
// ties), optionally renormalized. Grid T, one warp per token; E <= MOE_MAXE.
#define MOE_MAXE 1024
// topkRow is one token's topk_softmax, run by one warp (lane = threadIdx.x
// & 31): the k experts (ids) and their weights (w), which the decode-step
// kernel also computes this way. Lane l holds the probabilities of experts
// l, l+32, ... (E <= 32·Q) in registers, so that each of the k rounds is a
// warp argmax with no shared-memory round trip; the arithmetic and its
// order are those of a scratch-array version.
template <int Q>
__device__ void topkRow(const float* lr, int E, int k, int normalize, float* w, int* ids) {
  const int lane = threadIdx.x & 31;
  float p[Q];
  float mx = NEG_INF;
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    p[q] = lane + 32 * q < E ? lr[lane + 32 * q] : NEG_INF;
    mx = fmaxf(mx, p[q]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.f;
#pragma unroll
  for (int q = 0; q < Q; ++q)
    if (lane + 32 * q < E) {
      p[q] = expf(p[q] - mx);
      sum += p[q];
    }
  sum = warpSum(sum);
#pragma unroll
  for (int q = 0; q < Q; ++q)
    if (lane + 32 * q < E) p[q] /= sum;
  float tot = 0.f;
  for (int j = 0; j < k; ++j) {
    float bv = -1.f;
    int bi = 0x7fffffff;
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      const int i = lane + 32 * q;
      if (i < E && (p[q] > bv || (p[q] == bv && i < bi))) {
        bv = p[q];
        bi = i;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (lane == 0) {
      ids[j] = bi;
      w[j] = bv;
    }
#pragma unroll
    for (int q = 0; q < Q; ++q)
      if (lane + 32 * q == bi) p[q] = -1.f;  // taken
    tot += bv;
  }
  __syncwarp();  // lane 0's weights, before the lanes that renormalize them
  if (normalize && lane < k) w[lane] /= tot;
  __syncwarp();
}

#if KUNIT(0)
extern "C" __global__ void topk_softmax(float* weights, int* ids, const float* logits, int E, int k, int normalize) {
  PDL_ENTRY();
  const int t = blockIdx.x;
  topkRow<MOE_MAXE / 32>(logits + (long long)t * E, E, k, normalize, weights + (long long)t * k, ids + (long long)t * k);
}
#endif

// ---- scatter_add: dst[idx[i]] += scale[i] * src[i] (scale may be null).
// Grid (S), block over columns. A run of equal adjacent indices (a token's
// k expert rows) is summed in order by its first row and added once, so
// such sums are deterministic; other repeats meet in atomics.
#if KUNIT(0)
extern "C" __global__ void scatter_add(float* dst, const float* src, const int* idx, const float* scale, int C,
                                       int S) {
  PDL_ENTRY();
  const int i = blockIdx.x;
  const int d = idx[i];
  if (i > 0 && idx[i - 1] == d) return;  // not the first of its run
  int j1 = i + 1;
  while (j1 < S && idx[j1] == d) ++j1;
  float* o = dst + (long long)d * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float s = 0.f;
    for (int j = i; j < j1; ++j) s += (scale ? scale[j] : 1.f) * src[(long long)j * C + c];
    atomicAdd(o + c, s);
  }
}
#endif

// ---- grouped expert matmul: dst[r, :] = x[r/fan, :] · w[experts[r]]ᵀ, w
// holding E stacked [N, K] matrices ----

// expert_gemv (few rows, decode): grid (ceil(N/8), R), 8 warps a block,
// a warp per output; only the chosen experts' rows are read.
template <typename W>
__device__ void expert_gemv(float* dst, const float* x, const W* w, const int* experts, int N, int K, int E, int fan) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * 8 + warp, r = blockIdx.y;
  if (n >= N) return;
  const int e = experts[r];
  float s = 0.f;
  if (e >= 0 && e < E) {
    const float* xr = x + (long long)(r / fan) * K;
    const W* wr = w + ((long long)e * N + n) * K;
    if (sizeof(W) == 2 && (K & 7) == 0) {
      // 16-byte weight loads, 8 elements a lane: the row streams at full width.
      for (int k = lane * 8; k < K; k += 256) {
        const uint4 wv = *(const uint4*)(wr + k);
        const float4 x0 = *(const float4*)(xr + k), x1 = *(const float4*)(xr + k + 4);
        s += x0.x * tof(((const W*)&wv)[0]) + x0.y * tof(((const W*)&wv)[1]) + x0.z * tof(((const W*)&wv)[2]) +
             x0.w * tof(((const W*)&wv)[3]) + x1.x * tof(((const W*)&wv)[4]) + x1.y * tof(((const W*)&wv)[5]) +
             x1.z * tof(((const W*)&wv)[6]) + x1.w * tof(((const W*)&wv)[7]);
      }
    } else {
      for (int k = lane; k < K; k += 32) s += xr[k] * tof(wr[k]);
    }
    s = warpSum(s);
  }
  if (lane == 0) dst[(long long)r * N + n] = s;
}

// moe_align groups rows by expert for expert_gemm: each expert's rows are
// listed in sorted (padded with -1 to a multiple of tm, the GEMM's row
// tile), tileExp names the expert of each tm-row tile, and *numTiles
// counts them. One block of 1024 threads; E <= MOE_MAXE.
#define MOE_TM 32
#define MOE_TN 64
#define MOE_TK 32
#if KUNIT(0)
extern "C" __global__ void moe_align(const int* experts, int R, int E, int* sorted, int* tileExp, int* numTiles,
                                     int maxTiles, int tm) {
  PDL_ENTRY();
  __shared__ int cnt[MOE_MAXE];
  __shared__ int off[MOE_MAXE + 1];
  const int tid = threadIdx.x;
  for (int e = tid; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int r = tid; r < R; r += blockDim.x) {
    const int e = experts[r];
    if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  if (tid == 0) {
    off[0] = 0;
    for (int e = 0; e < E; ++e) off[e + 1] = off[e] + (cnt[e] + tm - 1) / tm * tm;
    *numTiles = off[E] / tm;
  }
  __syncthreads();
  for (int t = tid; t < maxTiles; t += blockDim.x) tileExp[t] = -1;
  for (int i = tid; i < off[E]; i += blockDim.x) sorted[i] = -1;
  __syncthreads();
  for (int e = tid; e < E; e += blockDim.x) {
    for (int t = off[e] / tm; t < off[e + 1] / tm; ++t) tileExp[t] = e;
    cnt[e] = 0;  // now each expert's cursor
  }
  __syncthreads();
  for (int r = tid; r < R; r += blockDim.x) {
    const int e = experts[r];
    if (e >= 0 && e < E) sorted[off[e] + atomicAdd(&cnt[e], 1)] = r;
  }
}
#endif

// expert_gemm (many rows, prefill): grid (ceil(N/MOE_TN), maxTiles), 256
// threads; a block computes TM rows of one expert × MOE_TN outputs,
// loading each weight tile once for all its rows. TM is 32, or 8 when the
// experts get few rows each (a decode batch spread over many experts),
// where a 32-row tile would be mostly padding. Each thread computes RPT
// rows × CPT columns.
template <typename W, int TM>
__device__ void expert_gemm(float* dst, const float* x, const W* w, const int* sorted, const int* tileExp,
                            const int* numTiles, int N, int K, int fan) {
  constexpr int RPT = TM >= 32 ? 2 : 1, CPT = TM >= 32 ? 4 : 2, CG = MOE_TN / CPT;
  static_assert((TM / RPT) * CG == 256, "256 threads cover the tile");
  const int tile = blockIdx.y;
  if (tile >= *numTiles) return;
  const int e = tileExp[tile];
  const int n0 = blockIdx.x * MOE_TN;
  __shared__ float xs[TM][MOE_TK + 1];
  __shared__ float ws[MOE_TN][MOE_TK + 1];
  __shared__ int rows[TM];
  const int tid = threadIdx.x;
  if (tid < TM) rows[tid] = sorted[tile * TM + tid];
  __syncthreads();
  const int tr = tid / CG, tc = tid % CG;  // rows tr*RPT ..; columns tc*CPT ..
  float acc[RPT][CPT];
#pragma unroll
  for (int i = 0; i < RPT; ++i)
#pragma unroll
    for (int j = 0; j < CPT; ++j) acc[i][j] = 0.f;
  for (int k0 = 0; k0 < K; k0 += MOE_TK) {
    for (int i = tid; i < TM * MOE_TK; i += blockDim.x) {
      const int r = i / MOE_TK, kk = i % MOE_TK, row = rows[r];
      xs[r][kk] = (row >= 0 && k0 + kk < K) ? x[(long long)(row / fan) * K + k0 + kk] : 0.f;
    }
    for (int i = tid; i < MOE_TN * MOE_TK; i += blockDim.x) {
      const int c = i / MOE_TK, kk = i % MOE_TK, n = n0 + c;
      ws[c][kk] = (n < N && k0 + kk < K) ? tof(w[((long long)e * N + n) * K + k0 + kk]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < MOE_TK; ++kk) {
      float a[RPT];
#pragma unroll
      for (int i = 0; i < RPT; ++i) a[i] = xs[tr * RPT + i][kk];
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        const float bw = ws[tc * CPT + j][kk];
#pragma unroll
        for (int i = 0; i < RPT; ++i) acc[i][j] += a[i] * bw;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < RPT; ++i) {
    const int row = rows[tr * RPT + i];
    if (row < 0) continue;
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int n = n0 + tc * CPT + j;
      if (n < N) dst[(long long)row * N + n] = acc[i][j];
    }
  }
}

// expert_mma (bf16 or FP8 weights, many rows): the grouped GEMM on tensor
// cores (mma.sync m16n8k16, f32 accumulation), over the tiles of
// moe_align with TOK rows each. Weights are the mma's A operand (16
// outputs a warp) and the rows its B (8 a fragment), so a tile of few rows
// (a decode batch over many experts) wastes no weight load: every block
// streams 64 weight rows of one expert through a STAGES-deep cp.async
// pipeline. x comes as bf16 planes (split_f32_bf16: PASSES 2 multiplies hi
// and lo, f32 accuracy; cast_f32_bf16: PASSES 1). FP8 weights (F8) are
// widened to bf16 as the A fragments are built (exact) and each output row
// is scaled at the end (scales [E·N]). With sorted null it is a dense
// product of R rows (one expert, row = tile·TOK + i). Grid (ceil(N/64),
// tiles, S), 4 warps; K % 8 == 0 (bf16) or K % 16 == 0 (FP8). With S > 1
// (split K: too few blocks to keep enough weight bytes in flight) block z
// sums its slice of K into the z-th R×N plane of dst, unscaled, and
// splitk_sum adds the planes and scales.
#define EM_BN 64
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

// BK columns a stage, STAGES stages: 32 and 3, or 64 and 4 (the _deep
// variants of 8-row tiles, an experiment: more bytes in flight a block).
template <int TOK, int PASSES, bool F8, int BK = 32, int STAGES = 3>
__device__ void expert_mma(float* dst, const bf16* x16, long long planeStride, const void* w, const float* scales,
                           const int* sorted, const int* tileExp, const int* numTiles, int R, int N, int K, int fan) {
  constexpr int LD = BK + 8;   // bf16 rows, padded: ldmatrix reads hit distinct banks
  constexpr int LDB = BK + 16; // FP8 rows in bytes, padded, 16-byte aligned
  constexpr int NT = TOK / 8;     // token n-tiles
  constexpr int WBYTES = F8 ? EM_BN * LDB : EM_BN * LD * 2;
  // Dynamic shared memory (expertMMAShared in moe.go): the weight stages,
  // then x's. A multiple of 16 bytes each.
  extern __shared__ __align__(16) unsigned char em_smem[];
  auto sW = reinterpret_cast<unsigned char (*)[WBYTES]>(em_smem);
  auto sX = reinterpret_cast<bf16 (*)[PASSES][TOK * LD]>(em_smem + STAGES * WBYTES);
  __shared__ int rows[TOK];
  const int tile = blockIdx.y;
  if (numTiles && tile >= *numTiles) return;
  const int e = tileExp ? tileExp[tile] : 0;
  const int n0 = blockIdx.x * EM_BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tq = lane & 3;
  for (int i = threadIdx.x; i < TOK; i += blockDim.x) {
    const int r = tile * TOK + i;
    rows[i] = sorted ? sorted[r] : (r < R ? r : -1);
  }
  __syncthreads();
  const long long wBase = (long long)e * N * K;  // in elements
  const int chunks = (K + BK - 1) / BK, per = (chunks + gridDim.z - 1) / gridDim.z;
  const int c0 = blockIdx.z * per, nK = max(0, min(chunks, c0 + per) - c0);
  const int kEnd = min(K, (c0 + nK) * BK);
  if (gridDim.z > 1) dst += (long long)blockIdx.z * R * N;

  // stage s <- columns [k0, k0+BK) of the weight rows and of x's rows.
  auto load = [&](int st, int k0) {
    if (F8) {
      constexpr int CPR = BK / 16;  // 16-byte chunks per row
      const unsigned char* wb = (const unsigned char*)w + wBase;
      for (int c = threadIdx.x; c < EM_BN * CPR; c += blockDim.x) {
        const int r = c / CPR, col = (c - r * CPR) * 16;
        const int n = n0 + r, k = k0 + col;
        const bool ok = n < N && k < kEnd;
        cp16(&sW[st][r * LDB + col], wb + (ok ? (long long)n * K + k : 0), ok);
      }
    } else {
      constexpr int CPR = BK / 8;
      const bf16* wb = (const bf16*)w + wBase;
      bf16* sw = (bf16*)sW[st];
      for (int c = threadIdx.x; c < EM_BN * CPR; c += blockDim.x) {
        const int r = c / CPR, col = (c - r * CPR) * 8;
        const int n = n0 + r, k = k0 + col;
        const bool ok = n < N && k < kEnd;
        cp16(&sw[r * LD + col], wb + (ok ? (long long)n * K + k : 0), ok);
      }
    }
    constexpr int CPR = BK / 8;
    for (int c = threadIdx.x; c < PASSES * TOK * CPR; c += blockDim.x) {
      const int pl = c / (TOK * CPR), rc = c - pl * TOK * CPR;
      const int r = rc / CPR, col = (rc - r * CPR) * 8;
      const int row = rows[r], k = k0 + col;
      const bool ok = row >= 0 && k < kEnd;
      cp16(&sX[st][pl][r * LD + col], x16 + (ok ? pl * planeStride + (long long)(row / fan) * K + k : 0), ok);
    }
  };

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < nK) load(st, (c0 + st) * BK);
    cp_commit();
  }
  for (int it = 0; it < nK; ++it) {
    cp_wait<STAGES - 2>();
    __syncthreads();  // stage it is in; every warp is done with stage it-1
    {
      const int nxt = it + STAGES - 1;
      if (nxt < nK) load(nxt % STAGES, (c0 + nxt) * BK);
      cp_commit();
    }
    const int st = it % STAGES;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      unsigned a[4];
      if (F8) {
        // a0..a3: (row g, k tq*2), (row g+8, same), (row g, k+8), (row g+8, k+8)
        const unsigned char* r0 = &sW[st][(warp * 16 + g) * LDB + kk * 16 + tq * 2];
        a[0] = f8x2bf(*(const unsigned short*)r0);
        a[1] = f8x2bf(*(const unsigned short*)(r0 + 8 * LDB));
        a[2] = f8x2bf(*(const unsigned short*)(r0 + 8));
        a[3] = f8x2bf(*(const unsigned short*)(r0 + 8 * LDB + 8));
      } else {
        // matrices: outputs +0..7 / +8..15 at columns kk*16 and kk*16+8
        ldsm_x4(a, (const bf16*)sW[st] + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + kk * 16 + (lane >> 4) * 8);
      }
#pragma unroll
      for (int j = 0; j < NT; j += 2) {
#pragma unroll
        for (int pl = 0; pl < PASSES; ++pl) {
          unsigned b[4];
          if (j + 1 < NT) {
            // matrices: tokens j*8.. at columns kk*16, +8, then tokens (j+1)*8.. at the same
            ldsm_x4(b, &sX[st][pl][((j + (lane >> 4)) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8]);
            mma_bf16(acc[j], a, b[0], b[1]);
            mma_bf16(acc[j + 1], a, b[2], b[3]);
          } else {
            ldsm_x4(b, &sX[st][pl][(j * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8]);
            mma_bf16(acc[j], a, b[0], b[1]);
          }
        }
      }
    }
  }
  cp_wait<0>();
  // acc[j]: outputs warp*16+g (c0, c1) and +8 (c2, c3), tokens j*8 + tq*2 + {0, 1}.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int n = n0 + warp * 16 + g + (i >> 1) * 8;
    const float sc = (F8 && n < N && gridDim.z == 1) ? scales[(long long)e * N + n] : 1.f;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int row = rows[j * 8 + tq * 2 + (i & 1)];
      if (row >= 0 && n < N) dst[(long long)row * N + n] = acc[j][i] * sc;
    }
  }
}
#endif

// expert_mma_wide: expert_mma's form for 64-row tiles (prefill), where
// many rows share each weight tile and the product is bound by the tensor
// cores' operand traffic: with 64 weight rows a block each warp fed 8 mma
// a k16 step from 1 A and 4 B ldmatrix_x4 a pass. Here a block computes
// EMW_BM (128) weight rows × the tile's 64 rows of x through EMW_BK (64)
// columns a stage, its 4 warps WM × WN over (weight rows, tokens), a warp
// MT m16 tiles × NT n8 tiles:
//   bf16 (WN 2): 2 × 2 warps of 64 weight rows × 32 tokens; a k16 step
//     loads 4 A ldmatrix_x4 (shared by the passes) and 2 B a pass, feeding
//     16 mma a pass.
//   FP8 (WN 1): 4 × 1 warps of 32 × 64, so that every code is widened
//     (f8x2bf, the costly part of its A fragments) by one warp only.
// Dynamic shared memory (expertMMAShared in moe.go): STAGES weight stages
// of EMW_BM rows (bf16 padded by 8 elements, FP8 by 16 bytes), then x's
// stages, each plane 64 rows of EMW_BK+8 bf16. STAGES is 4 where four fit
// in 112 KiB, else 3, so that two blocks share an H100's SM. The copies'
// row addresses are computed once a block and the shared ones taken as
// window addresses (ldsm_x4_at, cp16_at), so a stage's copies and
// ldmatrix are little more than the instructions themselves. Grid
// (ceil(N/EMW_BM), tiles, S); everything else as expert_mma.
#define EMW_BM 128
#define EMW_BK 64
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
template <int PASSES, bool F8, int STAGES, int WN>
__device__ void expert_mma_wide(float* dst, const bf16* x16, long long planeStride, const void* w, const float* scales,
                                const int* sorted, const int* tileExp, const int* numTiles, int R, int N, int K,
                                int fan) {
  constexpr int TOK = 64, BM = EMW_BM, BK = EMW_BK, THREADS = 128;
  constexpr int WM = 4 / WN, MT = BM / (WM * 16), NT = TOK / (WN * 8);
  static_assert(WM * WN == 4 && MT * WM * 16 == BM && NT * WN * 8 == TOK && NT % 2 == 0, "4 warps cover the tile");
  constexpr int LD = BK + 8;    // bf16 rows, padded: ldmatrix reads hit distinct banks
  constexpr int LDB = BK + 16;  // FP8 rows in bytes, padded, 16-byte aligned
  constexpr int WROW = F8 ? LDB : LD * 2;  // a weight row's bytes in a stage
  constexpr int WBYTES = BM * WROW, XBYTES = TOK * LD * 2;
  // Copies: a thread moves 16-byte chunks at one column of its rows, WPT
  // weight rows WSTEP apart and XPT rows of x XSTEP apart (each plane).
  constexpr int ES = F8 ? 1 : 2;                   // a weight's bytes
  constexpr int WCPR = BK * ES / 16, XCPR = BK / 8;  // 16-byte chunks a row
  constexpr int WSTEP = THREADS / WCPR, WPT = BM / WSTEP, XSTEP = THREADS / XCPR, XPT = TOK / XSTEP;
  static_assert(WPT * WSTEP == BM && XPT * XSTEP == TOK, "threads cover a stage");
  extern __shared__ __align__(16) unsigned char em_smem[];
  __shared__ int rows[TOK];
  const int tile = blockIdx.y;
  if (numTiles && tile >= *numTiles) return;
  const int e = tileExp ? tileExp[tile] : 0;
  const int n0 = blockIdx.x * BM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tq = lane & 3;
  const int wm = warp / WN, wn = warp % WN;
  if (threadIdx.x < TOK) {
    const int r = tile * TOK + threadIdx.x;
    rows[threadIdx.x] = sorted ? sorted[r] : (r < R ? r : -1);
  }
  __syncthreads();
  const int chunks = (K + BK - 1) / BK, per = (chunks + gridDim.z - 1) / gridDim.z;
  const int c0 = blockIdx.z * per, nK = max(0, min(chunks, c0 + per) - c0);
  const int kEnd = min(K, (c0 + nK) * BK);
  if (gridDim.z > 1) dst += (long long)blockIdx.z * R * N;

  // Each copied row's start (a row past N or a padding row of x: a valid
  // row, not copied), so that a stage adds only its column.
  const int wr = threadIdx.x / WCPR, wc = (threadIdx.x % WCPR) * (16 / ES);  // first row; column (elements)
  const int xr = threadIdx.x / XCPR, xc = (threadIdx.x % XCPR) * 8;
  const unsigned char* wRow[WPT];
  unsigned wOk = 0;  // bit i: weight row i is inside N
#pragma unroll
  for (int i = 0; i < WPT; ++i) {
    const int n = n0 + wr + i * WSTEP;
    wOk |= (n < N ? 1u : 0u) << i;
    wRow[i] = (const unsigned char*)w + ((long long)e * N + min(n, N - 1)) * K * ES;
  }
  const bf16* xRow[XPT];
  unsigned xOk = 0;  // bit j: x row j is a row, not padding
#pragma unroll
  for (int j = 0; j < XPT; ++j) {
    const int row = rows[xr + j * XSTEP];
    xOk |= (row >= 0 ? 1u : 0u) << j;
    xRow[j] = x16 + (row >= 0 ? (long long)(row / fan) * K : 0);
  }
  // Shared-window addresses: stage st's weights at sW + st·WBYTES, plane pl
  // of its x at sX + (st·PASSES + pl)·XBYTES.
  const unsigned sW = smemAddr(em_smem), sX = sW + STAGES * WBYTES;

  // stage st <- columns [k0, k0+BK) of the weight rows and of x's rows.
  auto load = [&](int st, int k0) {
    const bool wk = k0 + wc < kEnd, xk = k0 + xc < kEnd;
    const long long wo = wk ? (long long)(k0 + wc) * ES : 0, xo = xk ? k0 + xc : 0;
    const unsigned ws = sW + st * WBYTES + wr * WROW + wc * ES;
#pragma unroll
    for (int i = 0; i < WPT; ++i) cp16_at(ws + i * WSTEP * WROW, wRow[i] + wo, wk && (wOk >> i & 1));
    const unsigned xs = sX + st * PASSES * XBYTES + (xr * LD + xc) * 2;
#pragma unroll
    for (int pl = 0; pl < PASSES; ++pl)
#pragma unroll
      for (int j = 0; j < XPT; ++j)
        cp16_at(xs + pl * XBYTES + j * XSTEP * LD * 2, xRow[j] + pl * planeStride + xo, xk && (xOk >> j & 1));
  };

  // ldmatrix addresses within a stage (bytes). A: matrices rows +0..7 /
  // +8..15 of the warp's first m16 tile at columns 0 and 8. B: tokens
  // wn*NT*8 + 0..7 at columns 0, 8, then the next 8 tokens at the same.
  const unsigned aOff = ((wm * MT * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8) * 2;
  const unsigned bOff = (((wn * NT + (lane >> 4)) * 8 + (lane & 7)) * LD + ((lane >> 3) & 1) * 8) * 2;
  // F8: a thread's A bytes, (row g, k tq*2) of the warp's first m16 tile.
  const unsigned aF8 = (wm * MT * 16 + g) * LDB + tq * 2;

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < nK) load(st, (c0 + st) * BK);
    cp_commit();
  }
  int st = 0;
  for (int it = 0; it < nK; ++it) {
    cp_wait<STAGES - 2>();
    __syncthreads();  // stage it is in; every warp is done with stage it-1
    {
      const int nxt = it + STAGES - 1;
      if (nxt < nK) load(st == 0 ? STAGES - 1 : st - 1, (c0 + nxt) * BK);
      cp_commit();
    }
    const unsigned ws = sW + st * WBYTES, xs = sX + st * PASSES * XBYTES;
    const unsigned char* wf = em_smem + st * WBYTES + aF8;
    // The fragments of k16 step kk + 1 load while step kk's mma run.
    unsigned a[2][MT][4], b[2][PASSES][NT / 2][4];
    auto frags = [&](int f, int kk) {
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        if (F8) {
          // a0..a3: (row g, k tq*2), (row g+8, same), (row g, k+8), (row g+8, k+8)
          const unsigned char* r0 = wf + i * 16 * LDB + kk * 16;
          a[f][i][0] = f8x2bf(*(const unsigned short*)r0);
          a[f][i][1] = f8x2bf(*(const unsigned short*)(r0 + 8 * LDB));
          a[f][i][2] = f8x2bf(*(const unsigned short*)(r0 + 8));
          a[f][i][3] = f8x2bf(*(const unsigned short*)(r0 + 8 * LDB + 8));
        } else {
          ldsm_x4_at(a[f][i], ws + aOff + (i * 16 * LD + kk * 16) * 2);
        }
      }
#pragma unroll
      for (int pl = 0; pl < PASSES; ++pl)
#pragma unroll
        for (int j = 0; j < NT; j += 2) ldsm_x4_at(b[f][pl][j / 2], xs + pl * XBYTES + bOff + (j * 8 * LD + kk * 16) * 2);
    };
    frags(0, 0);
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      if (kk + 1 < BK / 16) frags((kk + 1) & 1, kk + 1);
      const int f = kk & 1;
#pragma unroll
      for (int pl = 0; pl < PASSES; ++pl)
#pragma unroll
        for (int j = 0; j < NT; j += 2)
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            mma_bf16(acc[i][j], a[f][i], b[f][pl][j / 2][0], b[f][pl][j / 2][1]);
            mma_bf16(acc[i][j + 1], a[f][i], b[f][pl][j / 2][2], b[f][pl][j / 2][3]);
          }
    }
    st = st == STAGES - 1 ? 0 : st + 1;
  }
  cp_wait<0>();
  // acc[i][j]: weight rows (wm*MT + i)*16 + g (c0, c1) and +8 (c2, c3),
  // tokens (wn*NT + j)*8 + tq*2 + {0, 1}.
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = n0 + (wm * MT + i) * 16 + g + h * 8;
      const float sc = (F8 && n < N && gridDim.z == 1) ? scales[(long long)e * N + n] : 1.f;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int row = rows[(wn * NT + j) * 8 + tq * 2 + q];
          if (row >= 0 && n < N) dst[(long long)row * N + n] = acc[i][j][h * 2 + q] * sc;
        }
      }
    }
  }
}
#endif

#define INST_EXPERT_MMA_CFG(S, W, F8, TOK, P, SUFFIX, BK, STAGES)                                                \
  extern "C" __global__ void __launch_bounds__(128) expert_mma_##S##_##TOK##_##P##SUFFIX(                        \
      float* dst, const bf16* x16, long long planeStride, const W* w, const float* scales, const int* sorted,    \
      const int* tileExp, const int* numTiles, int R, int N, int K, int fan) {                                   \
    PDL_ENTRY();                                                                                                 \
    EXPERT_MMA_BODY(TOK, P, F8, BK, STAGES);                                                                     \
  }
#define INST_EXPERT_MMA(S, W, F8, TOK, P) INST_EXPERT_MMA_CFG(S, W, F8, TOK, P, , 32, 3)
// The wide forms of 64-row tiles: STAGES stages, WN warps across the tokens.
#define INST_EXPERT_MMA_WIDE(S, W, F8, P, STAGES, WN)                                                           \
  extern "C" __global__ void __launch_bounds__(128) expert_mma_##S##_64_##P##_wide(                             \
      float* dst, const bf16* x16, long long planeStride, const W* w, const float* scales, const int* sorted,    \
      const int* tileExp, const int* numTiles, int R, int N, int K, int fan) {                                   \
    PDL_ENTRY();                                                                                                 \
    EXPERT_MMA_WIDE_BODY(P, F8, STAGES, WN);                                                                     \
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define EXPERT_MMA_BODY(TOK, P, F8, BK, STAGES) \
  expert_mma<TOK, P, F8, BK, STAGES>(dst, x16, planeStride, w, scales, sorted, tileExp, numTiles, R, N, K, fan)
#define EXPERT_MMA_WIDE_BODY(P, F8, STAGES, WN) \
  expert_mma_wide<P, F8, STAGES, WN>(dst, x16, planeStride, w, scales, sorted, tileExp, numTiles, R, N, K, fan)
#else
#define EXPERT_MMA_BODY(TOK, P, F8, BK, STAGES) __trap()
#define EXPERT_MMA_WIDE_BODY(P, F8, STAGES, WN) __trap()
#endif
// The grouped expert products are a unit of their own (29): in unit 0 with
// the small kernels they made it the slowest compile of a cold start.
#if KUNIT(29)
// splitk_sum: dst[i] = (sum over z of part[z·n + i]) · scales[i % N] (no
// scales: 1), the planes added in order (deterministic).
extern "C" __global__ void splitk_sum(float* dst, const float* part, int S, long long n, int N, const float* scales) {
  PDL_ENTRY();
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    float acc = part[i];
    for (int z = 1; z < S; ++z) acc += part[z * n + i];
    dst[i] = scales ? acc * scales[i % N] : acc;
  }
}
// f8_to_bf16 widens n FP8 codes (n % 16 == 0, 16-byte aligned) to bf16,
// exactly: FP8 products of many rows run cuBLAS on the widened weight.
extern "C" __global__ void f8_to_bf16(bf16* dst, const unsigned char* codes, long long n) {
  PDL_ENTRY();
  for (long long i = (blockIdx.x * (long long)blockDim.x + threadIdx.x) * 16; i < n;
       i += (long long)gridDim.x * blockDim.x * 16) {
    const uint4 c = *(const uint4*)(codes + i);
    const unsigned w[4] = {c.x, c.y, c.z, c.w};
    unsigned out[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      out[2 * j] = f8x2bf(w[j]);
      out[2 * j + 1] = f8x2bf(w[j] >> 16);
    }
    *(uint4*)(dst + i) = make_uint4(out[0], out[1], out[2], out[3]);
    *(uint4*)(dst + i + 8) = make_uint4(out[4], out[5], out[6], out[7]);
  }
}
INST_EXPERT_MMA(bf16, bf16, false, 8, 1)
INST_EXPERT_MMA(bf16, bf16, false, 8, 2)
INST_EXPERT_MMA(bf16, bf16, false, 64, 1)
INST_EXPERT_MMA(bf16, bf16, false, 64, 2)
INST_EXPERT_MMA(f8, unsigned char, true, 8, 1)
INST_EXPERT_MMA(f8, unsigned char, true, 8, 2)
INST_EXPERT_MMA(f8, unsigned char, true, 64, 1)
INST_EXPERT_MMA(f8, unsigned char, true, 64, 2)
INST_EXPERT_MMA_CFG(bf16, bf16, false, 8, 1, _deep, 64, 4)
INST_EXPERT_MMA_CFG(bf16, bf16, false, 8, 2, _deep, 64, 4)
INST_EXPERT_MMA_WIDE(bf16, bf16, false, 1, 4, 2)
INST_EXPERT_MMA_WIDE(bf16, bf16, false, 2, 3, 2)
INST_EXPERT_MMA_WIDE(f8, unsigned char, true, 1, 4, 1)
INST_EXPERT_MMA_WIDE(f8, unsigned char, true, 2, 4, 1)
#endif

#define INST_EXPERTS(T, S)                                                                                      \
  extern "C" __global__ void expert_gemv_##S(float* dst, const float* x, const T* w, const int* experts, int N, \
                                             int K, int E, int fan) {                                          \
    PDL_ENTRY();                                                                                                \
    expert_gemv<T>(dst, x, w, experts, N, K, E, fan);                                                           \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(256) expert_gemm_##S(                                           \
      float* dst, const float* x, const T* w, const int* sorted, const int* tileExp, const int* numTiles, int N, \
      int K, int fan) {                                                                                         \
    PDL_ENTRY();                                                                                                \
    expert_gemm<T, MOE_TM>(dst, x, w, sorted, tileExp, numTiles, N, K, fan);                                    \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(256) expert_gemm8_##S(                                          \
      float* dst, const float* x, const T* w, const int* sorted, const int* tileExp, const int* numTiles, int N, \
      int K, int fan) {                                                                                         \
    PDL_ENTRY();                                                                                                \
    expert_gemm<T, 8>(dst, x, w, sorted, tileExp, numTiles, N, K, fan);                                         \
  }

#if KUNIT(29)
INST_EXPERTS(float, f32)
INST_EXPERTS(bf16, bf16)
INST_EXPERTS(f16, f16)
#endif
