// ---- flash attention over the paged bf16 cache (prefill) ----
//
// FlashAttention-2 on tensor cores (mma.sync m16n8k16 bf16, f32
// accumulation), for steps whose tokens come in runs of one sequence
// (prefill, chunked prefill, prefix-cache hits): the per-token kernel in
// attention.cu reads every key once per token, this one once per 64 tokens.
//
// Grid (ceil(T/TB), KVH), FA_WARPS warps per block. A block serves the
// query heads of one KV head (a GQA group of G = H/KVH) for TB = FA_BM/G
// consecutive tokens of the step: row r is token r/G's head r%G of the
// group (rows past TB·G are idle), so every K/V tile a block loads serves
// all G heads, and the cache is read once per group rather than once per
// query head. Warp w owns rows [16w, 16w+16). Keys stream through shared
// memory in tiles of FA_BN (K
// and V in separate buffers, so V's load overlaps Q·Kᵀ and the next K's
// load overlaps P·V), each row keeping a running max and sum (online
// softmax, in base 2). The rows of a block may belong to several sequences
// (a tile that straddles two, or tokens in any order): the block makes one
// pass over the keys per sequence that flashServes (attention.cu, which
// counts tokens, not rows), masking the rows of the others; the per-token
// kernel, launched before it, serves the rest (a few decode tokens of many
// sequences).
//
// PASSES 2 keeps f32 accuracy where the inputs are f32: q and the softmax
// weights p are each split into two bf16 halves (hi + lo) and both are
// multiplied, so only K and V (bf16 in the cache) are rounded, as in the
// per-token kernel. PASSES 1 rounds q and p to bf16 once (FlashAttention's
// own precision, Options.RoundActivations). Scores stay unscaled until
// the FMA that feeds the exp (m and l are in base 2 of scaled scores), so
// the scale must be positive (useFlash).
//
// Two forms: flash_attn below (64 rows a block, 16 a warp) and
// flash_attn_wide (128 rows a block, 32 a warp; flashWide in ops.go picks
// it). Both cut the step's tokens into tiles of their rows over G, and the
// per-token kernel must cut them alike (flashRows).

#define FA_BM 64
#define FA_BN 64
#define FA_WARPS 4
// Three blocks an SM (the registers of each thread bounded to fit): twelve
// warps hide the latency of one another's loads and barriers.
#define FA_MIN_BLOCKS 3
// The wide form (flash_attn_wide): 128 rows a block, two blocks an SM.
#define FW_BM 128
#define FW_MIN_BLOCKS 2

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

// fa_load starts copying keys [k0, k0+BN) ∩ [k0, kEnd) of one KV head
// (K or V rows of the cache) into buf, zeros elsewhere. rowBase holds each
// key's element offset in the cache (-1: none).
template <int D, int BN = FA_BN>
__device__ __forceinline__ void fa_load(bf16* buf, const bf16* cache, const long long* rowBase) {
  constexpr int LD = D + 8, CPR = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < BN * CPR; c += FA_WARPS * 32) {
    const int r = c / CPR, col = (c - r * CPR) * 8;
    const long long base = rowBase[r];
    cp16(buf + r * LD + col, cache + (base < 0 ? 0 : base + col), base >= 0);
  }
}

// fa_next (thread 0) picks the next sequence of a block's BM rows that
// flashServes (the others' are the per-token kernel's) and the keys its
// rows need: sequence cur (-1: none left), keys [lo, hi). It counts tokens,
// not rows (a token's G rows share its sequence), as the per-token kernel
// does; valid < 0 asks it to count the block's tokens first. edge is the
// sequences of the tokens just outside the block's (tileEdgeSeqs).
template <int BM>
__device__ void fa_next(int G, int* sSeq, const int* sPos, const int* sFirst, int2 edge, int& valid, int& cur,
                        int& lo, int& hi) {
  if (valid < 0) {
    int n = 0;
    for (int r = 0; r < BM; r += G) n += sSeq[r] >= 0;
    valid = n;
  }
  for (;;) {
    cur = -1;
    lo = 0x7fffffff;
    hi = 0;
    int same = 0;
    for (int r = 0; r < BM; r += G) {
      if (sSeq[r] < 0) continue;
      if (cur < 0) cur = sSeq[r];
      if (sSeq[r] == cur) {
        ++same;
        lo = min(lo, sFirst[r]);
        hi = max(hi, sPos[r] + 1);
      }
    }
    if (cur < 0 || flashServes(same, valid, edge.x == cur || edge.y == cur)) break;
    for (int r = 0; r < BM; ++r)
      if (sSeq[r] == cur) sSeq[r] = -1;
  }
}

// fa_rows fills a block's BM rows (TB = BM/G tokens from t0, G query
// heads each; -1: no token): each row's sequence, position and first key
// (sliding window), and q's rows in shared memory as bf16 planes (hi, and
// lo with PASSES 2) of BM rows of LD, read as mma A fragments with
// ldmatrix: in registers they took 32 (64) of them a thread, which now go
// to another block an SM.
template <int D, int PASSES, int BM>
__device__ __forceinline__ void fa_rows(const float* q, const int* tokenSeq, const int* positions, int T, int G,
                                        int t0, int kvh, int qStride, int window, int* sSeq, int* sPos,
                                        int* sFirst, bf16* sQ) {
  constexpr int LD = D + 8;
  const int TB = BM / G;
  for (int r = threadIdx.x; r < BM; r += blockDim.x) {
    const int t = t0 + r / G;
    int seq = -1, pos = 0;
    if (r < TB * G && t < T) {
      seq = tokenSeq[t];
      pos = positions[t];
    }
    sSeq[r] = seq;
    sPos[r] = pos;
    sFirst[r] = window > 0 ? max(0, pos + 1 - window) : 0;
  }
  for (int c = threadIdx.x; c < BM * (D / 2); c += blockDim.x) {
    const int r = c / (D / 2), col = (c - r * (D / 2)) * 2, t = t0 + r / G;
    float2 v = make_float2(0.f, 0.f);
    if (r < TB * G && t < T) v = *(const float2*)(q + (long long)t * qStride + (long long)(kvh * G + r % G) * D + col);
    unsigned hi, lo;
    split_bf16(v.x, v.y, hi, lo);
    *(unsigned*)(sQ + r * LD + col) = hi;
    if (PASSES > 1) *(unsigned*)(sQ + (PASSES - 1) * BM * LD + r * LD + col) = lo;
  }
}

// fa_store writes this thread's part of row r's output: half h (row g or
// g+8) of the C fragments o of its m tile, divided by the row's sum L
// (summed over the quad here), to out and, when given, out16.
template <int D>
__device__ __forceinline__ void fa_store(float* out, bf16* out16, const float (&o)[D / 8][4], int h, float L,
                                         int r, int t0, int G, int kvh, int outStride, int tq) {
  const float inv = L > 0.f ? 1.f / L : 0.f;
  const long long ob = (long long)(t0 + r / G) * outStride + (long long)(kvh * G + r % G) * D + tq * 2;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    const float y0 = o[dn][h * 2] * inv, y1 = o[dn][h * 2 + 1] * inv;
    *(float2*)(out + ob + dn * 8) = make_float2(y0, y1);
    if (out16) *(unsigned*)(out16 + ob + dn * 8) = pack_bf16(y0, y1);
  }
}

// fa_done retires sequence cur's rows once they are written.
template <int BM>
__device__ __forceinline__ void fa_done(int* sSeq, int cur) {
  __syncthreads();
  for (int r = threadIdx.x; r < BM; r += blockDim.x)
    if (sSeq[r] == cur) sSeq[r] = -1;
  __syncthreads();
}

template <int D, int PASSES>
__device__ void flash_attn(float* out, const float* q, const bf16* kc, const bf16* vc, const int* tokenSeq,
                           const int* positions, const int* blockTables, int maxBlocks, int blockSize,
                           int numBlocks, int T, int H, int KVH, float scale, int qStride, int outStride,
                           bf16* out16, int window) {
  constexpr int LD = D + 8;  // padded rows: ldmatrix reads hit 8 distinct bank groups
  constexpr int KS = D / 16;  // k-steps of Q·Kᵀ
  constexpr int DN = D / 8;   // n-tiles of P·V
  // Dynamic shared memory (flashShared in ops.go): q's bf16 planes, then
  // the K and V tiles.
  extern __shared__ __align__(16) unsigned char fa_smem[];
  bf16* const sQ = (bf16*)fa_smem;  // [PASSES][FA_BM * LD]
  bf16* const sK = sQ + PASSES * FA_BM * LD;
  bf16* const sV = sK + FA_BN * LD;
  __shared__ long long sBase[2][FA_BN];
  __shared__ int sSeq[FA_BM], sPos[FA_BM], sFirst[FA_BM];
  __shared__ int sCur, sLo, sHi, sValid;

  const int tile = gridDim.x - 1 - blockIdx.x;  // the longest contexts first
  const int kvh = blockIdx.y, G = H / KVH, TB = FA_BM / G;
  const int t0 = tile * TB;
  const int2 edge = threadIdx.x == 0 ? tileEdgeSeqs(tokenSeq, t0, TB, T) : make_int2(-1, -1);  // fa_next's
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tq = lane & 3;
  const float sl2 = scale * 1.4426950408889634f;  // scores in base 2
  const long long kvRow = (long long)KVH * D;

  fa_rows<D, PASSES, FA_BM>(q, tokenSeq, positions, T, G, t0, kvh, qStride, window, sSeq, sPos, sFirst, sQ);
  if (threadIdx.x == 0) sValid = -1;  // counted once the rows are in
  __syncthreads();

  for (;;) {
    // The next sequence of this block's rows that flashServes (the others'
    // are the per-token kernel's), and the keys its rows need.
    if (threadIdx.x == 0) fa_next<FA_BM>(G, sSeq, sPos, sFirst, edge, sValid, sCur, sLo, sHi);
    __syncthreads();
    const int cur = sCur;
    if (cur < 0) break;
    const int kLo = sLo, kHi = sHi;
    const int* bt = blockTables + (long long)cur * maxBlocks;

    // Per row (g, g+8) of this thread: in this pass, its key range.
    int rPos[2], rFirst[2];
    bool rIn[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      const int r = warp * 16 + g + ri * 8;
      rIn[ri] = sSeq[r] == cur;
      rPos[ri] = sPos[r];
      rFirst[ri] = sFirst[r];
    }
    const bool warpIn = __any_sync(0xffffffffu, rIn[0] || rIn[1]);

    float o[DN][4];
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};

    const int nTiles = (kHi - kLo + FA_BN - 1) / FA_BN;
    auto bases = [&](int buf, int k0) {
      for (int r = threadIdx.x; r < FA_BN; r += blockDim.x) {
        const int p = k0 + r;
        long long base = -1;
        if (p < kHi) {
          const int bi = p / blockSize;
          const int blk = bi < maxBlocks ? bt[bi] : -1;
          if (blk >= 0 && blk < numBlocks)
            base = ((long long)blk * blockSize + (p - bi * blockSize)) * kvRow + (long long)kvh * D;
        }
        sBase[buf][r] = base;
      }
    };
    bases(0, kLo);
    __syncthreads();
    fa_load<D>(sK, kc, sBase[0]);
    cp_commit();
    fa_load<D>(sV, vc, sBase[0]);
    cp_commit();

    for (int it = 0; it < nTiles; ++it) {
      const int k0 = kLo + it * FA_BN;
      const int cb = it & 1;  // sBase buffer of this tile
      if (it + 1 < nTiles) bases(cb ^ 1, k0 + FA_BN);
      cp_wait<1>();  // K of this tile
      __syncthreads();

      float s[FA_BN / 8][4];
#pragma unroll
      for (int nt = 0; nt < FA_BN / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
      if (warpIn) {
#pragma unroll
        for (int kk = 0; kk < KS; kk += 2) {
          // q's A fragments of k-steps kk and kk+1. matrices: rows +0..7 /
          // +8..15 of the warp's 16, at columns kk*16 and kk*16+8.
          unsigned qa[PASSES][2][4];
#pragma unroll
          for (int ps = 0; ps < PASSES; ++ps)
#pragma unroll
            for (int h = 0; h < 2; ++h)
              ldsm_x4(qa[ps][h], sQ + ps * FA_BM * LD + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                     (kk + h) * 16 + (lane >> 4) * 8);
#pragma unroll
          for (int nt = 0; nt < FA_BN / 8; ++nt) {
            unsigned b[4];
            // matrices: keys nt*8.., columns kk*16, kk*16+8, (kk+1)*16, (kk+1)*16+8
            ldsm_x4(b, sK + (nt * 8 + (lane & 7)) * LD + kk * 16 + (lane >> 3) * 8);
#pragma unroll
            for (int ps = 0; ps < PASSES; ++ps) {
              mma_bf16(s[nt], qa[ps][0], b[0], b[1]);
              mma_bf16(s[nt], qa[ps][1], b[2], b[3]);
            }
          }
        }
      }
      __syncthreads();  // every warp is done with sK
      if (it + 1 < nTiles) fa_load<D>(sK, kc, sBase[cb ^ 1]);
      cp_commit();

      // Online softmax over this tile, rows g and g+8. A tile whose keys
      // all have a live KV block and lie in the range of each of the
      // warp's rows of this pass (most of a long prompt's) needs no mask:
      // rows of other passes are not written, their values do not matter.
      bool interior = sBase[cb][lane] >= 0 && sBase[cb][lane + 32] >= 0;
#pragma unroll
      for (int ri = 0; ri < 2; ++ri)
        interior = interior && (!rIn[ri] || (k0 + FA_BN - 1 <= rPos[ri] && k0 >= rFirst[ri]));
      interior = __all_sync(0xffffffffu, interior);
      float mNew[2], corr[2];
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        float mx = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < FA_BN / 8; ++nt) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float v = s[nt][ri * 2 + j];  // scaled into base 2 below, in the FMA before the exp
            if (!interior) {
              const int p = k0 + nt * 8 + tq * 2 + j;
              // Keys past kHi or without a live KV block are absent, as in
              // the per-token kernel.
              const bool ok = rIn[ri] && p <= rPos[ri] && p >= rFirst[ri] && sBase[cb][p - k0] >= 0;
              v = ok ? v : NEG_INF;
            }
            s[nt][ri * 2 + j] = v;
            mx = fmaxf(mx, v);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        mNew[ri] = fmaxf(m[ri], mx * sl2);  // scale > 0 (useFlash): the raw maximum scales to the scaled one
        const float base = mNew[ri] == NEG_INF ? 0.f : mNew[ri];
        corr[ri] = fast_exp2(m[ri] - base);  // 0 while nothing was seen
        m[ri] = mNew[ri];
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < FA_BN / 8; ++nt) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float pe = fast_exp2(fmaf(s[nt][ri * 2 + j], sl2, -base));
            s[nt][ri * 2 + j] = pe;
            sum += pe;
          }
        }
        l[ri] = l[ri] * corr[ri] + sum;
      }
      // Once the rows' maxima settle (most tiles of a long prompt), every
      // corr is 1 and the rescale is skipped, warp by warp.
      if (__any_sync(0xffffffffu, corr[0] != 1.f || corr[1] != 1.f)) {
#pragma unroll
        for (int dn = 0; dn < DN; ++dn) {
          o[dn][0] *= corr[0];
          o[dn][1] *= corr[0];
          o[dn][2] *= corr[1];
          o[dn][3] *= corr[1];
        }
      }

      cp_wait<1>();  // V of this tile
      __syncthreads();
      if (warpIn) {
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; ++kk) {
          // P's C fragments of n-tiles 2kk and 2kk+1 are the A fragment of k-step kk.
          unsigned pa[PASSES][4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float* c = s[2 * kk + (i >> 1)] + (i & 1) * 2;
            if (PASSES == 1)
              pa[0][i] = pack_bf16(c[0], c[1]);
            else
              split_bf16(c[0], c[1], pa[0][i], pa[PASSES - 1][i]);
          }
#pragma unroll
          for (int dn = 0; dn < DN; dn += 2) {
            unsigned b[4];
            // matrices: keys kk*16.. and kk*16+8.. at columns dn*8, then (dn+1)*8
            ldsm_x4_t(b, sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (dn + (lane >> 4)) * 8);
#pragma unroll
            for (int ps = 0; ps < PASSES; ++ps) {
              mma_bf16(o[dn], pa[ps], b[0], b[1]);
              mma_bf16(o[dn + 1], pa[ps], b[2], b[3]);
            }
          }
        }
      }
      __syncthreads();  // every warp is done with sV
      if (it + 1 < nTiles) fa_load<D>(sV, vc, sBase[cb ^ 1]);
      cp_commit();
    }
    cp_wait<0>();

    // Normalize and write this sequence's rows.
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      float L = l[ri];
      L += __shfl_xor_sync(0xffffffffu, L, 1);
      L += __shfl_xor_sync(0xffffffffu, L, 2);
      if (!rIn[ri]) continue;  // not this pass's, or idle (sSeq -1)
      // This thread's row (g or g+8 of its warp's 16).
      fa_store<D>(out, out16, o, ri, L, warp * 16 + g + ri * 8, t0, G, kvh, outStride, tq);
    }
    fa_done<FA_BM>(sSeq, cur);
  }
}

// ---- the wide form (flash_attn_bf16_<D>_<PASSES>_wide) ----
//
// FlashAttention-2's layout: FW_BM = 128 rows a block (TB = FW_BM/G
// tokens), and warp w owns rows [32w, 32w+32) as two m16 tiles, so each K
// or V fragment that ldmatrix reads feeds the mma of both tiles, twice the
// narrow form's (which is bound by the latency of those reads). Two blocks
// an SM, each thread up to 255 registers: o alone is 2·DN·4 f32.
//
// Fragments of thread (g = lane/4, tq = lane%4) of warp w: its rows are
// 32w + 16mt + g + 8h (mt: m tile, h: half), row i = 2mt + h of its m, l;
// s[mt][nt] is the C fragment of keys k0 + 8nt.. of m tile mt (elements
// 2h, 2h+1: row half h, keys 8nt + 2tq, +1), o[mt][dn] that of head
// columns 8dn.. . q's planes are read per k-step (2 m tiles · PASSES A
// fragments), not held across the tile.
//
// With ST = 2 stages, K and V of tile it+1 load while tile it computes,
// behind one barrier a tile; the block tables' rows of tile it+2 are
// looked up meanwhile (sBase in three slots). With ST = 1 (where two
// stages would leave one block an SM: head dim 128 with PASSES 2) K and V
// have a buffer each, as in the narrow form.

template <int D, int PASSES, int BN, int ST>
__device__ void flash_attn_wide(float* out, const float* q, const bf16* kc, const bf16* vc, const int* tokenSeq,
                                const int* positions, const int* blockTables, int maxBlocks, int blockSize,
                                int numBlocks, int T, int H, int KVH, float scale, int qStride, int outStride,
                                bf16* out16, int window) {
  constexpr int LD = D + 8;  // padded rows: ldmatrix reads hit 8 distinct bank groups
  constexpr int KS = D / 16;  // k-steps of Q·Kᵀ
  constexpr int DN = D / 8;   // n-tiles of P·V
  constexpr int NT = BN / 8;  // n-tiles of Q·Kᵀ
  constexpr int QP = FW_BM * LD, KV = BN * LD;  // elements of a q plane, of a K or V tile
  // Dynamic shared memory (flashShared in ops.go): q's bf16 planes, then
  // ST K tiles and ST V tiles.
  extern __shared__ __align__(16) unsigned char fa_smem[];
  bf16* const sQ = (bf16*)fa_smem;  // [PASSES][QP]
  bf16* const sK = sQ + PASSES * QP;  // [ST][KV]
  bf16* const sV = sK + ST * KV;      // [ST][KV]
  __shared__ long long sBase[3][BN];
  __shared__ int sSeq[FW_BM], sPos[FW_BM], sFirst[FW_BM];
  __shared__ int sCur, sLo, sHi, sValid;

  const int tile = gridDim.x - 1 - blockIdx.x;  // the longest contexts first
  const int kvh = blockIdx.y, G = H / KVH, TB = FW_BM / G;
  const int t0 = tile * TB;
  const int2 edge = threadIdx.x == 0 ? tileEdgeSeqs(tokenSeq, t0, TB, T) : make_int2(-1, -1);  // fa_next's
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tq = lane & 3;
  const float sl2 = scale * 1.4426950408889634f;  // scores in base 2
  const long long kvRow = (long long)KVH * D;

  fa_rows<D, PASSES, FW_BM>(q, tokenSeq, positions, T, G, t0, kvh, qStride, window, sSeq, sPos, sFirst, sQ);
  if (threadIdx.x == 0) sValid = -1;

  // ldmatrix addresses of this lane (bytes in the shared window). q (A,
  // x4): rows +0..7 / +8..15 of an m tile at columns +0 / +8. K (B, x4):
  // keys +0..7 at columns +0, +8, then keys +8..15 at columns +0, +8 (two
  // n-tiles of one k-step). V (B, x4 transposed): keys +0..7 / +8..15 at
  // columns +0, then at columns +8 (one k-step of two n-tiles).
  const unsigned qA = smemAddr(sQ) + ((warp * 32 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8) * 2;
  const unsigned kA = smemAddr(sK) + (((lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8) * 2;
  const unsigned vA = smemAddr(sV) + (((lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8) * 2;
  __syncthreads();

  for (;;) {
    if (threadIdx.x == 0) fa_next<FW_BM>(G, sSeq, sPos, sFirst, edge, sValid, sCur, sLo, sHi);
    __syncthreads();
    const int cur = sCur;
    if (cur < 0) break;
    const int kLo = sLo, kHi = sHi;
    const int* bt = blockTables + (long long)cur * maxBlocks;

    // The warp's rows of this pass: whether any, and the keys all of them
    // take (a tile within needs no mask). Per-row ranges are read from
    // shared memory in the few tiles that need them, not held.
    bool any = false;
    int wPos = 0x7fffffff, wFirst = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = warp * 32 + (i >> 1) * 16 + g + (i & 1) * 8;
      if (sSeq[r] == cur) {
        any = true;
        wPos = min(wPos, sPos[r]);
        wFirst = max(wFirst, sFirst[r]);
      }
    }
#pragma unroll
    for (int x = 1; x < 32; x <<= 1) {
      wPos = min(wPos, __shfl_xor_sync(0xffffffffu, wPos, x));
      wFirst = max(wFirst, __shfl_xor_sync(0xffffffffu, wFirst, x));
    }
    const bool warpIn = __any_sync(0xffffffffu, any);

    float o[2][DN][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int dn = 0; dn < DN; ++dn) o[mt][dn][0] = o[mt][dn][1] = o[mt][dn][2] = o[mt][dn][3] = 0.f;
    float m[4] = {NEG_INF, NEG_INF, NEG_INF, NEG_INF}, l[4] = {0.f, 0.f, 0.f, 0.f};

    const int nTiles = (kHi - kLo + BN - 1) / BN;
    auto bases = [&](int slot, int k0) {
      for (int r = threadIdx.x; r < BN; r += blockDim.x) {
        const int p = k0 + r;
        long long base = -1;
        if (p < kHi) {
          const int bi = p / blockSize;
          const int blk = bi < maxBlocks ? bt[bi] : -1;
          if (blk >= 0 && blk < numBlocks)
            base = ((long long)blk * blockSize + (p - bi * blockSize)) * kvRow + (long long)kvh * D;
        }
        sBase[slot][r] = base;
      }
    };
    bases(0, kLo);
    if (ST == 2 && nTiles > 1) bases(1, kLo + BN);
    __syncthreads();
    fa_load<D, BN>(sK, kc, sBase[0]);
    cp_commit();
    fa_load<D, BN>(sV, vc, sBase[0]);
    cp_commit();

    for (int it = 0; it < nTiles; ++it) {
      const int k0 = kLo + it * BN;
      const int slot = it % 3;  // sBase slot of this tile
      const int stage = ST == 2 ? it & 1 : 0;
      if constexpr (ST == 2) {
        cp_wait<0>();  // this tile's K and V
        __syncthreads();  // ... everyone's; every warp is done with the tile before
        if (it + 1 < nTiles) {
          fa_load<D, BN>(sK + (stage ^ 1) * KV, kc, sBase[(it + 1) % 3]);
          fa_load<D, BN>(sV + (stage ^ 1) * KV, vc, sBase[(it + 1) % 3]);
        }
        cp_commit();
        if (it + 2 < nTiles) bases((it + 2) % 3, k0 + 2 * BN);
      } else {
        if (it + 1 < nTiles) bases((it + 1) % 3, k0 + BN);
        cp_wait<1>();  // K of this tile
        __syncthreads();
      }

      float s[2][NT][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
      if (warpIn) {
        const unsigned kb = kA + stage * KV * 2;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          unsigned qa[2][PASSES][4];
#pragma unroll
          for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int ps = 0; ps < PASSES; ++ps) ldsm_x4_at(qa[mt][ps], qA + (ps * QP + mt * 16 * LD + kk * 16) * 2);
#pragma unroll
          for (int np = 0; np < NT / 2; ++np) {
            unsigned b[4];
            ldsm_x4_at(b, kb + (np * 16 * LD + kk * 16) * 2);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
              for (int ps = 0; ps < PASSES; ++ps) {
                mma_bf16(s[mt][2 * np], qa[mt][ps], b[0], b[1]);
                mma_bf16(s[mt][2 * np + 1], qa[mt][ps], b[2], b[3]);
              }
          }
        }
      }
      if constexpr (ST == 1) {
        __syncthreads();  // every warp is done with sK
        if (it + 1 < nTiles) fa_load<D, BN>(sK, kc, sBase[(it + 1) % 3]);
        cp_commit();
      }

      // Online softmax over this tile, as in the narrow form.
      bool interior = k0 + BN - 1 <= wPos && k0 >= wFirst;
#pragma unroll
      for (int c = 0; c < BN; c += 32) interior = interior && sBase[slot][c + lane] >= 0;
      interior = __all_sync(0xffffffffu, interior);
      float corr[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int mt = i >> 1, h = i & 1;
        bool rIn = true;
        int rPos = 0, rFirst = 0;
        if (!interior) {
          const int r = warp * 32 + mt * 16 + g + h * 8;
          rIn = sSeq[r] == cur;
          rPos = sPos[r];
          rFirst = sFirst[r];
        }
        float mx = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float v = s[mt][nt][h * 2 + j];  // scaled into base 2 in the FMA before the exp
            if (!interior) {
              const int p = k0 + nt * 8 + tq * 2 + j;
              const bool ok = rIn && p <= rPos && p >= rFirst && sBase[slot][p - k0] >= 0;
              v = ok ? v : NEG_INF;
            }
            s[mt][nt][h * 2 + j] = v;
            mx = fmaxf(mx, v);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mNew = fmaxf(m[i], mx * sl2);  // scale > 0 (useFlash)
        const float base = mNew == NEG_INF ? 0.f : mNew;
        corr[i] = fast_exp2(m[i] - base);  // 0 while nothing was seen
        m[i] = mNew;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float pe = fast_exp2(fmaf(s[mt][nt][h * 2 + j], sl2, -base));
            s[mt][nt][h * 2 + j] = pe;
            sum += pe;
          }
        }
        l[i] = l[i] * corr[i] + sum;
      }
      if (__any_sync(0xffffffffu, corr[0] != 1.f || corr[1] != 1.f || corr[2] != 1.f || corr[3] != 1.f)) {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int dn = 0; dn < DN; ++dn) {
            o[mt][dn][0] *= corr[mt * 2];
            o[mt][dn][1] *= corr[mt * 2];
            o[mt][dn][2] *= corr[mt * 2 + 1];
            o[mt][dn][3] *= corr[mt * 2 + 1];
          }
      }

      if constexpr (ST == 1) {
        cp_wait<1>();  // V of this tile
        __syncthreads();
      }
      if (warpIn) {
        const unsigned vb = vA + stage * KV * 2;
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          // P's C fragments of n-tiles 2kk and 2kk+1 are the A fragment of k-step kk.
          unsigned pa[2][PASSES][4];
#pragma unroll
          for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const float* c = s[mt][2 * kk + (i >> 1)] + (i & 1) * 2;
              if (PASSES == 1)
                pa[mt][0][i] = pack_bf16(c[0], c[1]);
              else
                split_bf16(c[0], c[1], pa[mt][0][i], pa[mt][PASSES - 1][i]);
            }
#pragma unroll
          for (int dn = 0; dn < DN; dn += 2) {
            unsigned b[4];
            ldsm_x4_t_at(b, vb + (kk * 16 * LD + dn * 8) * 2);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
              for (int ps = 0; ps < PASSES; ++ps) {
                mma_bf16(o[mt][dn], pa[mt][ps], b[0], b[1]);
                mma_bf16(o[mt][dn + 1], pa[mt][ps], b[2], b[3]);
              }
          }
        }
      }
      if constexpr (ST == 1) {
        __syncthreads();  // every warp is done with sV
        if (it + 1 < nTiles) fa_load<D, BN>(sV, vc, sBase[(it + 1) % 3]);
        cp_commit();
      }
    }
    cp_wait<0>();

    // Normalize and write this sequence's rows.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float L = l[i];
      L += __shfl_xor_sync(0xffffffffu, L, 1);
      L += __shfl_xor_sync(0xffffffffu, L, 2);
      const int mt = i >> 1, h = i & 1, r = warp * 32 + mt * 16 + g + h * 8;
      if (sSeq[r] != cur) continue;  // not this pass's, or idle (sSeq -1)
      fa_store<D>(out, out16, o[mt], h, L, r, t0, G, kvh, outStride, tq);
    }
    fa_done<FW_BM>(sSeq, cur);
  }
}

// fw_cfg: the wide form's keys a tile (BN) and K/V stages (ST), as
// flashShared in ops.go has them: two stages where q's planes and both fit
// two blocks an SM (an H100's 228 KiB).
template <int D, int PASSES>
struct fw_cfg {
  static constexpr int BN = 64;
  static constexpr int ST = D * PASSES > 128 ? 1 : 2;
};

#endif

#define INST_FLASH(D, P)                                                                                       \
  extern "C" __global__ void __launch_bounds__(FA_WARPS * 32, FA_MIN_BLOCKS) flash_attn_bf16_##D##_##P(                     \
      float* out, const float* q, const bf16* kc, const bf16* vc, const int* tokenSeq, const int* positions,   \
      const int* blockTables, int maxBlocks, int blockSize, int numBlocks, int T, int H, int KVH, float scale, \
      int qStride, int outStride, bf16* out16, int window) {                                                   \
    PDL_ENTRY();                                                                                               \
    FLASH_BODY(D, P);                                                                                          \
  }

#define INST_FLASH_WIDE(D, P)                                                                                  \
  extern "C" __global__ void __launch_bounds__(FA_WARPS * 32, FW_MIN_BLOCKS) flash_attn_bf16_##D##_##P##_wide(         \
      float* out, const float* q, const bf16* kc, const bf16* vc, const int* tokenSeq, const int* positions,   \
      const int* blockTables, int maxBlocks, int blockSize, int numBlocks, int T, int H, int KVH, float scale, \
      int qStride, int outStride, bf16* out16, int window) {                                                   \
    PDL_ENTRY();                                                                                               \
    FLASH_WIDE_BODY(D, P);                                                                                     \
  }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FLASH_BODY(D, P)                                                                                     \
  flash_attn<D, P>(out, q, kc, vc, tokenSeq, positions, blockTables, maxBlocks, blockSize, numBlocks, T, H, \
                   KVH, scale, qStride, outStride, out16, window)
#define FLASH_WIDE_BODY(D, P)                                                                                 \
  flash_attn_wide<D, P, fw_cfg<D, P>::BN, fw_cfg<D, P>::ST>(out, q, kc, vc, tokenSeq, positions, blockTables, \
                                                           maxBlocks, blockSize, numBlocks, T, H, KVH, scale,  \
                                                           qStride, outStride, out16, window)
#else
#define FLASH_BODY(D, P) __trap()
#define FLASH_WIDE_BODY(D, P) __trap()
#endif

#if KUNIT(22)
INST_FLASH(64, 1)
INST_FLASH(64, 2)
#endif
#if KUNIT(32)
INST_FLASH(128, 1)
INST_FLASH(128, 2)
#endif
// The wide forms in units of their own: each is about as long a compile as
// the narrow forms of its head dim together.
#if KUNIT(35)
INST_FLASH_WIDE(64, 1)
INST_FLASH_WIDE(64, 2)
#endif
#if KUNIT(36)
INST_FLASH_WIDE(128, 1)
INST_FLASH_WIDE(128, 2)
#endif
