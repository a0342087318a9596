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
  const bf16 *qkv, *o, *gu, *down;       // bf16, or FP8 codes (decode_step_f8_*)
  const float *qkvb, *ob, *gub, *downb;  // null: no bias
  const void *inNorm, *postNorm;         // dtype nwdt
  const float *qn, *kn;                  // per-head q/k RMSNorm weights [hd] (StepArgs.qkNorm)
  const float *qkvs, *os, *gus, *downs;  // FP8 weights: each row's scale (null for bf16)
  // A sparse MLP (gu and down null): the router [E, H] and every expert's
  // gate/up [E·2I', H] (expert e's gate rows, then its up rows) and down
  // [E·H, I'], I' = StepArgs.moeI. bf16 only.
  const bf16 *router, *expGU, *expDown;
  long long window;  // sliding attention window: the last window positions (0: all)
};

// Clock stamps a layer (StepArgs.stamps): q/k/v, barrier, attention, o,
// then gate/up and down; a sparse MLP's router, top-k, experts' gate/up,
// experts' down and the sum instead of the last two.
#define STEP_STAMPS 8

struct StepArgs {
  const StepLayer* layers;
  float* h;     // layer 0's input; the last layer's output
  float* acts;  // per layer: h after attention [H], after the MLP [H], q/k/v, attention output, SiLU output
  float *partO, *partML;
  unsigned* bar;  // [0] arrivals, [STEP_EXIT] blocks done, [STEP_GEN] generation, [STEP_SPLITS+h] finished pieces of head h
  const int *pos, *slots, *tokSeq, *bt;
  const float* invFreq;
  char* kv;  // layer l's K cache at kv + 2l·layerBytes, its V cache layerBytes further
  unsigned long long* stamps;  // null, or block 0's clock at each phase's start (STEP_STAMPS a layer; benchmarks)
  long long layerBytes, numSlots;
  // Bytes of each layer's gate/up weights asked into L2 at the layer's
  // start, beside all of its o weights (stepPrefetchL2); -1: nothing.
  long long pfGU;
  int numLayers, H, I, nh, nkv, hd, nwdt, maxBlocks, blockSize, numBlocks, ns, ksQKV, ksO, ksGU, ksDown;
  int syncMode;  // the grid barrier's variant (gridMode)
  int qkNorm;    // q and k are RMS-normed head by head before RoPE (Qwen3)
  int gh;        // heads of a GQA group an attention warp takes (stepGroupHeads in step.go: 1, 2 or 3)
  int attnForm;  // with gh 1, how a piece's passes run (STEP_ATTN_*, see stepAttention)
  int kvdt;      // the KV cache's dtype: 1 bf16, 2 FP8 E4M3 with scale 1 (stKV)
  // Sparse MLPs: E experts (0: none), the topK a token takes (weights
  // renormalized when normTopK), each expert's intermediate size, and the
  // router's, the experts' gate/up and down phases' split-K factors.
  int E, topK, normTopK, moeI, ksRouter, ksEGU, ksEDown;
  float eps, scale;
};

// stepPrefetchL2 asks L2 for the n bytes at p (from sm_90: one bulk
// prefetch a thread, the range cut over the grid's threads in 16-byte
// aligned chunks). It does not wait: a layer's q/k/v, attention and o
// phases are chains of latency with HBM mostly idle, and the o and gate/up
// weights they prefetch stream meanwhile, so the bandwidth-bound gate/up
// phase finds part of its weights in L2.
__device__ __forceinline__ void stepPrefetchL2(const void* p, long long n) {
  // CUDA 12's PTX has the instruction; older NVRTCs (Debian's 11.8, the
  // spill tests') compile no prefetch.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDACC_VER_MAJOR__) && __CUDACC_VER_MAJOR__ >= 12
  n &= ~15LL;
  if (n <= 0 || ((unsigned long long)p & 15)) return;
  const long long nthr = (long long)gridDim.x * blockDim.x, t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long chunk = ((n + nthr - 1) / nthr + 15) & ~15LL, off = t * chunk;
  if (off < n)
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"((const char*)p + off), "r"((unsigned)min(chunk, n - off))
                 : "memory");
#endif
}

// stepTasks is the number of block tasks of a GEMV phase (a task is 8/KS
// pairs of rows; see dgemvRows).
template <int EPI, int KS>
__device__ __forceinline__ int stepTasks(const DArgs& a) {
  constexpr int per = 8 / KS;
  const int P = (EPI == EPI_SILU || EPI == EPI_ROPE) ? a.N >> 1 : (a.N + 1) >> 1;
  return (P + per - 1) / per;
}

// stepPhaseKS returns the phase's number of tasks.
template <int EPI, int KS, bool F8W>
__device__ __forceinline__ int stepPhaseKS(const DArgs& a, unsigned* bar, int first) {
  const int tasks = stepTasks<EPI, KS>(a);
  // Block first takes task 0: phases that share a barrier interval (the
  // experts of a sparse MLP) start where the previous one's tasks ended,
  // so their tasks spread over the whole grid instead of its first blocks.
  int blk = blockIdx.x;
  if (first) blk = blk >= first ? blk - first : blk + gridDim.x - first;
  gridArrive(bar);
  if (blk >= tasks) {
    gridWait(bar);
    return tasks;
  }
  dgemv<1, EPI, KS, true, F8W>(a, blk, gridDim.x, tasks, bar);
  return tasks;
}

// stepPhase runs one GEMV phase split ks ways along K, its first task at
// block first (below gridDim.x); bar (null: none) is the barrier that
// separates it from the previous phase. It returns the block after its
// last task, where a next phase in the same barrier interval (the next
// expert of a sparse MLP) starts.
template <int EPI, bool F8W>
__device__ __forceinline__ int stepPhase(const DArgs& a, int ks, unsigned* bar, int first = 0) {
  int tasks;
  switch (ks) {
    case 1:
      tasks = stepPhaseKS<EPI, 1, F8W>(a, bar, first);
      break;
    case 2:
      tasks = stepPhaseKS<EPI, 2, F8W>(a, bar, first);
      break;
    case 4:
      tasks = stepPhaseKS<EPI, 4, F8W>(a, bar, first);
      break;
    default:
      tasks = stepPhaseKS<EPI, 8, F8W>(a, bar, first);
  }
  return (first + tasks) % gridDim.x;
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

// loadRow8 and widenRow8 are loadRow and widenRow for an FP8 cache: EPL
// E4M3 codes (scale 1) at p, low byte first.
template <int EPL>
__device__ __forceinline__ uint4 loadRow8(const unsigned char* p) {
  uint4 r = make_uint4(0, 0, 0, 0);
  if (EPL == 8) {
    const uint2 h = *(const uint2*)p;
    r.x = h.x;
    r.y = h.y;
  } else if (EPL == 4) {
    r.x = *(const unsigned*)p;
  } else if (EPL == 2) {
    r.x = *(const unsigned short*)p;
  } else {
    r.x = *p;
  }
  return r;
}
template <int EPL>
__device__ __forceinline__ void widenRow8(const uint4 r, float* o) {
#pragma unroll
  for (int e = 0; e < EPL; ++e) o[e] = f8tof(((e < 4 ? r.x : r.y) >> (8 * (e & 3))) & 0xffu);
}

// stepMergeGroup is the number of pieces of a head that one warp merges
// (the pieces of a group, then, with more than one group, the groups'
// results): a two-level merge keeps a long context's many pieces from
// queueing all their L2 round trips behind one warp.
#define STEP_MERGE_GROUP 16

// stepMerge merges, in one warp, n <= 32 partial results of each of the
// GH heads h0.. (a GQA set whose pieces one warp computed together): the
// pieces at slots first, first+stride, ... of each head's ns in
// partO/partML, each an unnormalized output row and its (max, sum). With
// out set it writes the normalized rows there; otherwise it writes each
// head's merged partial to its slot first. It sits on the step's critical
// path (the grid waits for the last head's merge), so it costs as few L2
// round trips as it can: lane s loads piece s's (max, sum) of every head
// once, and the rows' loads go out in batches (8 pieces of one head, 4 of
// several) before any is used; the heads share the round trips, which a
// merge per head would queue one behind another in the warp. Partials are
// rewritten by every layer: coherent loads. n is at most
// STEP_MERGE_GROUP (a group, or the groups of stepMaxSplits pieces).
template <int EPL, int GH>
__device__ __forceinline__ void stepMerge(float* partO, float* partML, int h0, int ns, int first, int stride, int n, int D,
                                          float* out) {
  constexpr int B = GH == 1 ? 8 : 4;  // pieces a batch of loads
  const int lane = threadIdx.x & 31;
  const bool dOK = lane * EPL < D;
  float M[GH], fs[GH], L[GH], o[GH][EPL];
#pragma unroll
  for (int i = 0; i < GH; ++i) {
    const long long mine = (long long)(h0 + i) * ns + first + (long long)lane * stride;
    const float ms = lane < n ? __ldcg(partML + 2 * mine) : NEG_INF;
    const float ls = lane < n ? __ldcg(partML + 2 * mine + 1) : 0.f;
    M[i] = ms;
#pragma unroll
    for (int x = 16; x > 0; x >>= 1) M[i] = fmaxf(M[i], __shfl_xor_sync(0xffffffffu, M[i], x));
    fs[i] = ms == NEG_INF ? 0.f : expf(ms - M[i]);
    L[i] = warpSum(ls * fs[i]);
#pragma unroll
    for (int e = 0; e < EPL; ++e) o[i][e] = 0.f;
  }
  for (int c0 = 0; c0 < n; c0 += B) {
    float pv[B][GH][EPL];
#pragma unroll
    for (int j = 0; j < B; ++j)
#pragma unroll
      for (int i = 0; i < GH; ++i)
#pragma unroll
        for (int e = 0; e < EPL; ++e)
          pv[j][i][e] = (c0 + j < n && dOK)
                            ? __ldcg(partO + ((long long)(h0 + i) * ns + first + (long long)(c0 + j) * stride) * D +
                                     lane * EPL + e)
                            : 0.f;
#pragma unroll
    for (int j = 0; j < B; ++j)
#pragma unroll
      for (int i = 0; i < GH; ++i) {
        const float f = __shfl_sync(0xffffffffu, fs[i], (c0 + j) & 31);
#pragma unroll
        for (int e = 0; e < EPL; ++e) o[i][e] += pv[j][i][e] * f;
      }
  }
#pragma unroll
  for (int i = 0; i < GH; ++i) {
    const long long hs = (long long)(h0 + i) * ns + first;
    if (out) {
      if (dOK)
#pragma unroll
        for (int e = 0; e < EPL; ++e) out[(long long)(h0 + i) * D + lane * EPL + e] = L[i] > 0.f ? o[i][e] / L[i] : 0.f;
      continue;
    }
    if (dOK)
#pragma unroll
      for (int e = 0; e < EPL; ++e) partO[hs * D + lane * EPL + e] = o[i][e];
    if (lane == 0) {
      partML[2 * hs] = M[i];
      partML[2 * hs + 1] = L[i];
    }
  }
}

// stepArrive counts a finished piece (or group) at counter c, whose last
// of n arrivals it reports to the whole warp (after acquiring the others'
// partials, so that every lane may read them). Lane 0's release count
// publishes the warp's partials, which __syncwarp orders before it; the
// last acquires the others' by an acquire load of the count (it reads the
// last add of the release sequence that every arrival's add continues),
// which costs less than a fence (gridMode 4 keeps the fence, for the
// benchmarks). The last resets the counter for the next layer.
__device__ __forceinline__ bool stepArrive(unsigned* c, int n) {
  const int lane = threadIdx.x & 31;
  __syncwarp();
  unsigned last = 0;
  if (lane == 0) {
    last = addRelease(c, 1u) == (unsigned)n - 1;
    if (last) {
      if (gridMode == 3)
        ldAcquire(c);
      else
        fenceAcqRel();
      *c = 0;
    }
  }
  last = __shfl_sync(0xffffffffu, last, 0);
  __syncwarp();  // lane 0's acquire, before every lane's loads
  return last;
}

// stepPiece writes piece split of stepAttention for the GH heads h0..
// (their unnormalized outputs acc and their max and sum), or with one
// piece the heads' outputs; the last piece of a group merges the group,
// and the last group the heads. A warp computes a piece of all GH heads at
// once, so head h0's counters count the set's arrivals (the other heads'
// stay 0). Not inlined: the merge's registers stay out of the passes'.
template <int EPL, int GH>
__device__ __noinline__ void stepPiece(const StepArgs& A, const float (&acc)[GH][EPL], const float (&m)[GH],
                                       const float (&l)[GH], int h0, int split, float* out) {
  const int ns = A.ns, D = A.hd, nh = A.nh, lane = threadIdx.x & 31;
  const bool dOK = lane * EPL < D;
  if (ns == 1) {
    if (dOK)
#pragma unroll
      for (int i = 0; i < GH; ++i)
#pragma unroll
        for (int e = 0; e < EPL; ++e)
          out[(long long)(h0 + i) * D + lane * EPL + e] = l[i] > 0.f ? acc[i][e] / l[i] : 0.f;
    return;
  }
  float* const partO = A.partO;
  float* const partML = A.partML;
  const int ng = (ns + STEP_MERGE_GROUP - 1) / STEP_MERGE_GROUP;
  // Counters: each (head, group)'s finished pieces, then each head's
  // finished groups.
  unsigned* const groupCount = A.bar + STEP_SPLITS;
  unsigned* const headCount = groupCount + nh * ng;
#pragma unroll
  for (int i = 0; i < GH; ++i) {
    const long long pi = (long long)(h0 + i) * ns + split;
    if (dOK)
#pragma unroll
      for (int e = 0; e < EPL; ++e) partO[pi * D + lane * EPL + e] = acc[i][e];
    if (lane == 0) {
      partML[2 * pi] = m[i];
      partML[2 * pi + 1] = l[i];
    }
  }
  // The last piece of the group merges it; with one group that is the
  // heads' output, else the group's partials, and the last group merges
  // the groups' partials.
  const int grp = split / STEP_MERGE_GROUP, gFirst = grp * STEP_MERGE_GROUP;
  const int inGroup = min(STEP_MERGE_GROUP, ns - gFirst);
  if (!stepArrive(groupCount + h0 * ng + grp, inGroup)) return;
  if (ng == 1) {
    stepMerge<EPL, GH>(partO, partML, h0, ns, 0, 1, ns, D, out);
    return;
  }
  stepMerge<EPL, GH>(partO, partML, h0, ns, gFirst, 1, inGroup, D, nullptr);
  if (!stepArrive(headCount + h0, ng)) return;
  stepMerge<EPL, GH>(partO, partML, h0, ns, 0, STEP_MERGE_GROUP, ng, D, out);
}

// stepLoadPass issues the K and V row loads of the pass of KW keys from c0
// of a piece that ends at k1 (keys past k1, or in blocks the table does not
// hold, load nothing) and returns the mask of its live keys. Lane i holds
// block-table entry b0+i in myBlk; the window moves (warp-uniformly) when
// the pass's last block is not in it.
template <int EPL, int KW, bool KV8>
__device__ __forceinline__ unsigned stepLoadPass(const char* kc, const char* vc, const int* bt, int c0, int k1, int bs,
                                                 int maxB, int numB, long long kvRow, long long kvOff, bool dOK, int& b0,
                                                 int& myBlk, uint4 (&kr)[KW], uint4 (&vr)[KW]) {
  const int lane = threadIdx.x & 31;
  unsigned valid = 0;
  if ((c0 + KW - 1) / bs - b0 >= 32) {
    b0 = c0 / bs;
    const int bi = b0 + lane;
    myBlk = bi < maxB ? bt[bi] : -1;
    if (myBlk >= numB) myBlk = -1;
  }
#pragma unroll
  for (int j = 0; j < KW; ++j) {
    const int p = c0 + j, bi = p / bs;
    int blk = __shfl_sync(0xffffffffu, myBlk, (bi - b0) & 31);
    if (p >= k1) blk = -1;
    if (blk >= 0) valid |= 1u << j;
    const long long row = ((long long)blk * bs + (p - bi * bs)) * kvRow + kvOff;
    kr[j] = vr[j] = make_uint4(0, 0, 0, 0);
    if (blk >= 0 && dOK) {
      const long long at = row + lane * EPL;  // elements
      if (KV8) {
        kr[j] = loadRow8<EPL>((const unsigned char*)kc + at);
        vr[j] = loadRow8<EPL>((const unsigned char*)vc + at);
      } else {
        kr[j] = loadRow<EPL>((const bf16*)kc + at);
        vr[j] = loadRow<EPL>((const bf16*)vc + at);
      }
    }
  }
  return valid;
}

// stepPassMath folds a pass's live keys (valid) into the GH heads' online
// softmax: their scores against qv, the running max m and sum l, and the
// unnormalized output acc.
template <int EPL, int GH, int KW, bool KV8>
__device__ __forceinline__ void stepPassMath(const uint4 (&kr)[KW], const uint4 (&vr)[KW], unsigned valid,
                                             const float (&qv)[GH][EPL], float (&acc)[GH][EPL], float (&m)[GH],
                                             float (&l)[GH]) {
  float sc[GH][KW];
#pragma unroll
  for (int j = 0; j < KW; ++j) {
    float kf[EPL];
    if (KV8)
      widenRow8<EPL>(kr[j], kf);
    else
      widenRow<EPL>(kr[j], kf);
#pragma unroll
    for (int i = 0; i < GH; ++i) {
      float d = 0.f;
#pragma unroll
      for (int e = 0; e < EPL; ++e) d += qv[i][e] * kf[e];
      sc[i][j] = d;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int i = 0; i < GH; ++i)
#pragma unroll
      for (int j = 0; j < KW; ++j) sc[i][j] += __shfl_xor_sync(0xffffffffu, sc[i][j], o);
#pragma unroll
  for (int i = 0; i < GH; ++i) {
    float mc = m[i];
#pragma unroll
    for (int j = 0; j < KW; ++j)
      if (valid >> j & 1) mc = fmaxf(mc, sc[i][j]);
    const float f = mc == NEG_INF ? 1.f : expf(m[i] - mc);  // 0 on the first live pass (m = -inf)
    l[i] *= f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[i][e] *= f;
#pragma unroll
    for (int j = 0; j < KW; ++j) sc[i][j] = (valid >> j & 1) && mc != NEG_INF ? expf(sc[i][j] - mc) : 0.f;
    m[i] = mc;
  }
#pragma unroll
  for (int j = 0; j < KW; ++j) {
    float vf[EPL];
    if (KV8)
      widenRow8<EPL>(vr[j], vf);
    else
      widenRow<EPL>(vr[j], vf);
#pragma unroll
    for (int i = 0; i < GH; ++i) {
      l[i] += sc[i][j];
#pragma unroll
      for (int e = 0; e < EPL; ++e) acc[i][e] += sc[i][j] * vf[e];
    }
  }
}

#define STEP_ATTN_PASSES 0
#define STEP_ATTN_PIPE 1
#define STEP_ATTN_WIDE 2

// stepAttention is a one-token step's attention: one warp per (GH heads
// of a GQA group, split) piece of up to 16 keys at a time, with no
// block-wide reductions, so a pass over a piece's keys is one round of
// independent loads (all its K and V rows: the block table entries of 32
// blocks at a time are held a lane each) and a few shuffles. The GH heads
// share the pass's K and V rows, which a head alone would read again for
// every head of its group (from L2, at a long context the pass's cost).
// The last piece of a group of STEP_MERGE_GROUP merges the group's pieces,
// and with several groups the last group merges their results
// (stepMerge). It is a separate (not inlined) function so that it gets its
// own register allocation. Lane l holds elements [l·EPL, l·EPL+EPL) of a
// head.
//
// FORM (StepArgs.attnForm) is how a piece's passes run: one after another
// (STEP_ATTN_PASSES), the next pass's loads issued before this one's
// arithmetic (STEP_ATTN_PIPE), or twice the keys a pass (STEP_ATTN_WIDE).
//
// A is the kernel's parameter block seen through a pointer: each field
// read is a load, and one in a key's address chain made every key wait
// for its own round trips (a pass cost ~16 of them). So every field is
// read once, up front.
template <int EPL, int GH, int FORM, bool KV8>
__device__ __noinline__ void stepAttention(const StepArgs& A, const char* kcl, const float* q, float* out, int ctx,
                                           const int* bt, int window) {
  // Keys per pass: more would spill (with several heads, each key's
  // scores take registers of their own). STEP_ATTN_WIDE takes twice as
  // many, for the benchmarks to weigh fewer round trips against spills;
  // STEP_ATTN_PIPE half as many, two passes' rows being held at once.
  constexpr int KW = (EPL <= 2 ? 16 : 8) / (GH > 1 ? 2 : 1) * (FORM == STEP_ATTN_WIDE ? 2 : 1) /
                     (FORM == STEP_ATTN_PIPE ? 2 : 1);
  const int nh = A.nh, nkv = A.nkv, D = A.hd, ns = A.ns, bs = A.blockSize, maxB = A.maxBlocks, numB = A.numBlocks;
  const float scale = A.scale;
  const int lane = threadIdx.x & 31, G = nh / nkv, nhg = nh / GH;
  const bool dOK = lane * EPL < D;
  // A window attends to the last window positions; the pieces cut those.
  const int first = window > 0 ? max(0, ctx - window) : 0;
  const int per = ((ctx - first + ns - 1) / ns + 7) & ~7;  // whole passes of 8 keys (stepSplits)
  const char* kc = kcl;
  const char* vc = kcl + A.layerBytes;
  const long long kvRow = (long long)nkv * D;
  for (int it = blockIdx.x * 8 + (threadIdx.x >> 5); it < nhg * ns; it += gridDim.x * 8) {
    const int h0 = (it % nhg) * GH, split = it / nhg, kvh = h0 / G;
    const int k0 = first + split * per, k1 = min(ctx, k0 + per);
    float qv[GH][EPL], acc[GH][EPL], m[GH], l[GH];
#pragma unroll
    for (int i = 0; i < GH; ++i) {
#pragma unroll
      for (int e = 0; e < EPL; ++e) {
        qv[i][e] = dOK ? q[(long long)(h0 + i) * D + lane * EPL + e] * scale : 0.f;
        acc[i][e] = 0.f;
      }
      m[i] = NEG_INF;
      l[i] = 0.f;
    }
    // Block table entries b0 .. b0+31, lane i holding b0+i's (-1: none).
    int b0 = -32, myBlk = -1;
    const long long kvOff = (long long)kvh * D;
    if (FORM == STEP_ATTN_PIPE) {
      // The next pass's loads go out before this pass's arithmetic, so a
      // piece of n passes waits for about one round trip, not n.
      uint4 kr[KW], vr[KW], kn[KW], vn[KW];
      unsigned valid = stepLoadPass<EPL, KW, KV8>(kc, vc, bt, k0, k1, bs, maxB, numB, kvRow, kvOff, dOK, b0, myBlk, kr, vr);
      for (int c0 = k0; c0 < k1; c0 += KW) {
        unsigned nextValid = 0;
        if (c0 + KW < k1)  // warp-uniform
          nextValid =
              stepLoadPass<EPL, KW, KV8>(kc, vc, bt, c0 + KW, k1, bs, maxB, numB, kvRow, kvOff, dOK, b0, myBlk, kn, vn);
        if (valid) stepPassMath<EPL, GH, KW, KV8>(kr, vr, valid, qv, acc, m, l);
#pragma unroll
        for (int j = 0; j < KW; ++j) {
          kr[j] = kn[j];
          vr[j] = vn[j];
        }
        valid = nextValid;
      }
    } else {
      for (int c0 = k0; c0 < k1; c0 += KW) {
        uint4 kr[KW], vr[KW];  // packed: two keys' floats would not fit in registers
        const unsigned valid =
            stepLoadPass<EPL, KW, KV8>(kc, vc, bt, c0, k1, bs, maxB, numB, kvRow, kvOff, dOK, b0, myBlk, kr, vr);
        if (valid) stepPassMath<EPL, GH, KW, KV8>(kr, vr, valid, qv, acc, m, l);  // warp-uniform
      }
    }
    stepPiece<EPL, GH>(A, acc, m, l, h0, split, out);
  }
}

// stepQKNorm is the phase that per-head q/k norms add after the q/k/v
// GEMV (which then only stores): a warp per q or k head of raw norms it,
// rotates it and stores it, q to qOut (a buffer of its own, as every
// activation: see the top) and k, with v, to the KV cache.
__device__ __noinline__ void stepQKNorm(const StepArgs& A, const float* qn, const float* kn, const float* raw,
                                        float* qOut, char* kcl) {
  const int nh = A.nh, nkv = A.nkv, hd = A.hd, half = hd / 2, lane = threadIdx.x & 31;
  const double p = (double)A.pos[0];
  const int slot = A.slots[0];
  const bool store = slot >= 0 && slot < A.numSlots;
  const int kvdt = A.kvdt;
  char* vcl = kcl + A.layerBytes;
  for (int h = blockIdx.x * 8 + (threadIdx.x >> 5); h < nh + nkv; h += gridDim.x * 8) {
    const bool isK = h >= nh;
    const float* hp = raw + h * hd;
    const float* nw = isK ? kn : qn;
    float ss = 0.f;
    for (int d = lane; d < hd; d += 32) ss += hp[d] * hp[d];
    ss = warpSum(ss);
    const float r = 1.0f / sqrtf(ss / (float)hd + A.eps);
    const int kh = h - nh;
    const long long o = (long long)slot * nkv * hd + (long long)kh * hd;
    for (int j = lane; j < half; j += 32) {
      const float a = (hp[j] * r) * nw[j], b = (hp[j + half] * r) * nw[j + half];
      double sd, cd;
      sincos(p * (double)A.invFreq[j], &sd, &cd);  // in double, as rope_kv
      const float sn = (float)sd, cs = (float)cd;
      const float na = a * cs - b * sn, nb = b * cs + a * sn;
      if (!isK) {
        qOut[h * hd + j] = na;
        qOut[h * hd + j + half] = nb;
      } else if (store) {
        stKV(kcl, kvdt, o + j, na);
        stKV(kcl, kvdt, o + j + half, nb);
      }
    }
    if (isK && store) {
      const float* vr = raw + (nh + nkv + kh) * hd;
      for (int d = lane; d < hd; d += 32) stKV(vcl, kvdt, o + d, vr[d]);
    }
  }
}

// moe.cu: one token's top-k softmax by one warp.
template <int Q>
__device__ void topkRow(const float* lr, int E, int k, int normalize, float* w, int* ids);
#define STEP_MAXE 256  // experts a decode step routes over
#define STEP_MAXK 32

// stepMoE is a layer's sparse MLP (after the o phase wrote hmid): the
// router's logits, the top-k computed by every block for itself (no
// barrier), each chosen expert's gate/up with SiLU and its down
// projection as GEMV phases of their own (an expert's weights are a base
// pointer into the stacked experts), then the residual plus the experts'
// weighted sum, in the order the unfused scatter_add sums them.
// Inlined: called as a function, every value live across the call was
// spilled, in the GEMV loops too (ptxas --verbose: 8 KB of spill stores).
__device__ __forceinline__ void stepMoE(const StepArgs& A, const StepLayer& L, const float* hmid, float* hout, float* rlog,
                                     float* eact, float* eout, unsigned long long* stamps) {
  __shared__ float sW[STEP_MAXK];
  __shared__ int sId[STEP_MAXK];
  const int H = A.H, I = A.moeI, k = A.topK;
  // The down phases add into eout (dgemv's plain store normalizes x): zero
  // it now, two barriers before they run.
  for (long long n = blockIdx.x * blockDim.x + threadIdx.x; n < (long long)k * H; n += gridDim.x * blockDim.x)
    eout[n] = 0.f;
  DArgs r = {};
  r.T = 1;
  r.eps = A.eps;
  r.nwdt = A.nwdt;
  r.w = L.router;
  r.xr = hmid;
  r.ldxr = H;
  r.nw = L.postNorm;
  r.dst = rlog;
  r.ldd = A.E;
  r.N = A.E;
  r.K = H;
  stepPhase<EPI_STORE, false>(r, A.ksRouter, A.bar);
  gridSync(A.bar);
  if (stamps) stamps[5] = clock64();
  if (threadIdx.x < 32) topkRow<STEP_MAXE / 32>(rlog, A.E, k, A.normTopK, sW, sId);
  __syncthreads();
  if (stamps) stamps[6] = clock64();
  // The k experts' GEMVs follow each other without a barrier, each
  // starting at the block after the previous one's tasks.
  int first = 0;
  for (int j = 0; j < k; ++j) {
    DArgs g = {};
    g.T = 1;
    g.eps = A.eps;
    g.nwdt = A.nwdt;
    g.w = L.expGU + (long long)sId[j] * 2 * I * H;
    g.xr = hmid;
    g.ldxr = H;
    g.nw = L.postNorm;
    g.dst = eact + (long long)j * I;
    g.ldd = I;
    g.N = 2 * I;
    g.K = H;
    first = stepPhase<EPI_SILU, false>(g, A.ksEGU, nullptr, first);  // no barrier: the experts' outputs are disjoint
  }
  if (stamps) stamps[7] = clock64();
  first = 0;
  for (int j = 0; j < k; ++j) {
    DArgs d = {};
    d.T = 1;
    d.w = L.expDown + (long long)sId[j] * H * I;
    d.xr = eact + (long long)j * I;
    d.ldxr = I;
    d.dst = eout + (long long)j * H;
    d.ldd = H;
    d.N = H;
    d.K = I;
    first = stepPhase<EPI_ADDF, false>(d, A.ksEDown, j == 0 ? A.bar : nullptr, first);
  }
  gridSync(A.bar);
  for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < H; n += gridDim.x * blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < k; ++j) acc += sW[j] * __ldcg(eout + (long long)j * H + n);
    hout[n] = hmid[n] + acc;
  }
}

// MOE: the kernel takes sparse MLPs too. Only a MoE model's kernel has
// that branch: it raises register pressure over the whole layer loop,
// and spills (ptxas --verbose) cost a dense model's step in every GEMV
// phase.
template <int EPL, bool F8W, bool MOE>
__device__ __forceinline__ void decodeStep(const StepArgs& A) {
  const int qkvN = (A.nh + 2 * A.nkv) * A.hd, qd = A.nh * A.hd;
  // A layer's activations (the normed q last, with qkNorm).
  const long long per = 2LL * A.H + qkvN + qd + A.I + (A.qkNorm ? qd : 0) +
                        (A.E ? A.E + (long long)A.topK * (A.moeI + A.H) : 0);
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
  if (stamp) A.stamps[STEP_STAMPS * l + (k)] = clock64()
    STAMP(0);
    if (A.pfGU >= 0) {
      constexpr long long wb = F8W ? 1 : 2;  // bytes a weight
      stepPrefetchL2(L.o, (long long)A.H * A.nh * A.hd * wb);
      if (L.gu) stepPrefetchL2(L.gu, min(A.pfGU, 2LL * A.I * A.H * wb));
    }

    DArgs a = {};
    a.T = 1;
    a.eps = A.eps;
    a.nwdt = A.nwdt;
    a.w = L.qkv;
    a.wscale = L.qkvs;
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
    a.kvdt = A.kvdt;
    a.slots = A.slots;
    a.numSlots = A.numSlots;
    a.nh = A.nh;
    a.nkv = A.nkv;
    a.hd = A.hd;
    // The embedding kernel wrote layer 0's input before this launch.
    const float* qAttn = q;
    if (A.qkNorm) {
      stepPhase<EPI_STORE, F8W>(a, A.ksQKV, l > 0 ? A.bar : nullptr);
      gridSync(A.bar);
      float* qNormed = act + A.I;
      stepQKNorm(A, L.qn, L.kn, q, qNormed, kcl);
      qAttn = qNormed;
    } else {
      stepPhase<EPI_ROPE, F8W>(a, A.ksQKV, l > 0 ? A.bar : nullptr);
    }
    STAMP(1);
    gridSync(A.bar);
    STAMP(2);
    {
      int form = A.gh == 1 ? A.attnForm : STEP_ATTN_PASSES;
      if constexpr (EPL > 4) form = STEP_ATTN_PASSES;  // at EPL 8 two passes' rows would spill
      if (A.kvdt == 2)  // an FP8 cache: one head a warp (step.go sets gh 1), passes as they are
        stepAttention<EPL, 1, STEP_ATTN_PASSES, true>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
      else if (A.gh == 3)
        stepAttention<EPL, 3, STEP_ATTN_PASSES, false>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
      else if (A.gh == 2)
        stepAttention<EPL, 2, STEP_ATTN_PASSES, false>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
      else if (form == STEP_ATTN_PASSES)
        stepAttention<EPL, 1, STEP_ATTN_PASSES, false>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
      else if constexpr (EPL <= 4) {
        if (form == STEP_ATTN_PIPE)
          stepAttention<EPL, 1, STEP_ATTN_PIPE, false>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
        else
          stepAttention<EPL, 1, STEP_ATTN_WIDE, false>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
      }
    }
    STAMP(3);

    DArgs o = {};
    o.T = 1;
    o.w = L.o;
    o.wscale = L.os;
    o.bias = L.ob;
    o.xr = att;
    o.ldxr = qd;
    o.res = hin;
    o.dst = hmid;
    o.ldd = A.H;
    o.N = A.H;
    o.K = qd;
    stepPhase<EPI_ADDF, F8W>(o, A.ksO, A.bar);
    if constexpr (MOE) {
      if (!L.gu) {
        float* rlog = act + A.I + (A.qkNorm ? qd : 0);
        float* eact = rlog + A.E;
        STAMP(4);
        stepMoE(A, L, hmid, hout, rlog, eact, eact + (long long)A.topK * A.moeI, stamp ? A.stamps + STEP_STAMPS * l : nullptr);
        hin = hout;
        continue;
      }
    }

    DArgs g = {};
    g.T = 1;
    g.eps = A.eps;
    g.nwdt = A.nwdt;
    g.w = L.gu;
    g.wscale = L.gus;
    g.bias = L.gub;
    g.xr = hmid;
    g.ldxr = A.H;
    g.nw = L.postNorm;
    g.dst = act;
    g.ldd = A.I;
    g.N = 2 * A.I;
    g.K = A.H;
    STAMP(4);
    stepPhase<EPI_SILU, F8W>(g, A.ksGU, A.bar);
    STAMP(5);

    DArgs d = {};
    d.T = 1;
    d.w = L.down;
    d.wscale = L.downs;
    d.bias = L.downb;
    d.xr = act;
    d.ldxr = A.I;
    d.res = hmid;
    d.dst = hout;
    d.ldd = A.H;
    d.N = A.H;
    d.K = A.I;
    stepPhase<EPI_ADDF, F8W>(d, A.ksDown, A.bar);
    hin = hout;
  }
  gridExit(A.bar);
#undef STAMP
}

// A is a __grid_constant__ so that stepAttention (not inlined) can take
// its address without the kernel copying it to local memory, where every
// read of a field would be a local load.
#define INST_STEP(NAME, EPL, F8W, MOE)                                                                      \
  extern "C" __global__ void __launch_bounds__(256, 2) NAME##EPL(const __grid_constant__ StepArgs A) { \
    decodeStep<EPL, F8W, MOE>(A);                                                                     \
  }
// One decode-step kernel per unit (the largest compiles): dense bf16
// weights in units 9 to 12, FP8 in 16 to 19, bf16 with sparse MLPs in 25
// to 28 (stepUnit in nvrtc.go).
#if KUNIT(9)
INST_STEP(decode_step_, 1, false, false)
#endif
#if KUNIT(10)
INST_STEP(decode_step_, 2, false, false)
#endif
#if KUNIT(11)
INST_STEP(decode_step_, 4, false, false)
#endif
#if KUNIT(12)
INST_STEP(decode_step_, 8, false, false)
#endif
#if KUNIT(16)
INST_STEP(decode_step_f8_, 1, true, false)
#endif
#if KUNIT(17)
INST_STEP(decode_step_f8_, 2, true, false)
#endif
#if KUNIT(18)
INST_STEP(decode_step_f8_, 4, true, false)
#endif
#if KUNIT(19)
INST_STEP(decode_step_f8_, 8, true, false)
#endif
#if KUNIT(25)
INST_STEP(decode_step_moe_, 1, false, true)
#endif
#if KUNIT(26)
INST_STEP(decode_step_moe_, 2, false, true)
#endif
#if KUNIT(27)
INST_STEP(decode_step_moe_, 4, false, true)
#endif
#if KUNIT(28)
INST_STEP(decode_step_moe_, 8, false, true)
#endif
