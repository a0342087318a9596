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
// then gate/up and down; a sparse MLP's router, top-k, experts' gate/up
// and experts' down with the sum instead of the last two.
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
  // start (pfAt 0) or once its q/k/v are in (pfAt 1: the attention phase
  // leaves HBM mostly idle), beside all of its o weights
  // (stepPrefetchL2); -1: nothing.
  long long pfGU;
  int numLayers, H, I, nh, nkv, hd, nwdt, maxBlocks, blockSize, numBlocks, ns, ksQKV, ksO, ksGU, ksDown;
  int syncMode;  // the grid barrier's variant (gridMode)
  int qkNorm;    // q and k are RMS-normed head by head before RoPE (Qwen3)
  int gh;        // heads of a GQA group an attention warp takes (stepGroupHeads in step.go: 1, 2 or 3)
  int attnForm;  // with gh 1, how a piece's passes run (STEP_ATTN_*, see stepAttention)
  int kvdt;      // the KV cache's dtype: 1 bf16, 2 FP8 E4M3 with scale 1 (stKV)
  int pfAt;      // where pfGU's prefetch is issued: 0 the layer's start, 1 its attention's
  // Sparse MLPs: E experts (0: none), the topK a token takes (weights
  // renormalized when normTopK), each expert's intermediate size, and the
  // router's and the experts' gate/up phases' split-K factors.
  int E, topK, normTopK, moeI, ksRouter, ksEGU;
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

// ---- tensor-core attention for a long context (STEP_ATTN_TC) ----
//
// stepAttention's lanes hold a head's dims, so every key costs a warp
// shuffle reduction per head, and each head of a GQA group reads the
// group's K/V rows again: at thousands of keys of context the phase waits
// on its own instructions and on L2. Here a warp takes a piece of up to 8
// keys a pass for all (up to 8) query heads of a KV head with two mma.sync
// m16n8k16 products per head-dim tile, and the pieces' partials are merged
// by a phase of their own (stepMergePieces, after a grid barrier) instead
// of by counters and the last piece.
//
// Fragments (g = lane/4, c = lane%4):
// - S = Q·Kᵀ: A = q, row g head h0+g's bf16 high part, row g+8 its
//   middle part (the rows past the group's heads are free: S = rows g +
//   g+8), and a second product adds its low part (row g; rows g+8 zero).
//   q in three parts keeps the scores at f32 accuracy: with two (16 bits)
//   a score's error grows with its size and shifts the exponent, and the
//   logits drifted from the f32 attention's by 50 times more. B = Kᵀ,
//   column g key c0+g. The k index of
//   k-step s is mapped to dims so that a lane's K values over all steps
//   are one run: k 2c+j is dim c·D/4+4s+j, k 2c+8+j dim c·D/4+4s+2+j.
// - O = P·V, computed as Oᵀ = Vᵀ·Pᵀ (M = dims, N = heads, K = keys): B =
//   Pᵀ, column g head h0+g, k 2c and 2c+1 its weights of keys c0+2c and
//   c0+2c+1 (the lane's own S values), k 2c+8.. the weights' low halves
//   against the same V (a = the same rows), so P keeps f32 accuracy too.
//   Row g of tile t is dim g·D/8+2t, row g+8 dim g·D/8+2t+1: a lane's V
//   values are one run of D/8 dims of each of its two keys.
// The accumulator c0..c3 of tile t is O of heads h0+2c and h0+2c+1 at
// the lane's dims 2t (c0, c1) and 2t+1 (c2, c3). Scores stay unscaled
// until the exponent; m and l are in base 2 of scaled scores.
#define STEP_ATTN_TC 3
// A lane of stepMergePieces takes up to this many pieces of a head:
// ns <= 32·STEP_MERGE_LANE (stepTCMaxSplits in step.go).
#define STEP_MERGE_LANE 8

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// ld4 and st4 move four floats at p, as one vector where p is 16-byte
// aligned (an activation buffer need not be: its offset in a layer's
// activations follows the model's sizes).
__device__ __forceinline__ float4 ld4(const float* p) {
  if (((unsigned long long)p & 15) == 0) return *(const float4*)p;
  return make_float4(p[0], p[1], p[2], p[3]);
}
__device__ __forceinline__ void st4(float* p, float4 v) {
  if (((unsigned long long)p & 15) == 0) {
    *(float4*)p = v;
    return;
  }
  p[0] = v.x, p[1] = v.y, p[2] = v.z, p[3] = v.w;
}

// ldWords loads the N 32-bit words at p in the widest vectors its
// alignment (4·N bytes, N a power of two) allows, or zeros without ok.
template <int N>
__device__ __forceinline__ void ldWords(const void* p, bool ok, unsigned (&w)[N]) {
  if constexpr (N >= 4) {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const uint4 v = ok ? ((const uint4*)p)[i / 4] : make_uint4(0, 0, 0, 0);
      w[i] = v.x, w[i + 1] = v.y, w[i + 2] = v.z, w[i + 3] = v.w;
    }
  } else if constexpr (N == 2) {
    const uint2 v = ok ? *(const uint2*)p : make_uint2(0, 0);
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = ok ? *(const unsigned*)p : 0u;
  }
}

// spreadWarp numbers the grid's warps for a phase of fewer items than
// warps: warp w of every block before warp w+1 of any, so that the items
// spread over all SMs (and their share of memory bandwidth) instead of
// filling the first blocks' warps. Items take it, it + gridDim.x·8, ...
__device__ __forceinline__ int spreadWarp() { return (threadIdx.x >> 5) * gridDim.x + blockIdx.x; }

// splitQ4 splits four q values (one k-step of a lane's fragment) into the
// three bf16 parts the tensor-core attention takes: the high and middle
// parts of (x, y) and (z, w), and the low parts, what those two missed.
__device__ __forceinline__ void splitQ4(float4 v, unsigned (&hm)[4], unsigned (&lo)[2]) {
  split_bf16(v.x, v.y, hm[0], hm[1]);
  split_bf16(v.z, v.w, hm[2], hm[3]);
  lo[0] = pack_bf16(v.x - __uint_as_float(hm[0] << 16) - __uint_as_float(hm[1] << 16),
                    v.y - __uint_as_float(hm[0] & 0xffff0000u) - __uint_as_float(hm[1] & 0xffff0000u));
  lo[1] = pack_bf16(v.z - __uint_as_float(hm[2] << 16) - __uint_as_float(hm[3] << 16),
                    v.w - __uint_as_float(hm[2] & 0xffff0000u) - __uint_as_float(hm[3] & 0xffff0000u));
}

// TCPieceArgs are what a tensor-core attention piece reads of its launch
// (the decode step's StepArgs has these fields too): the pieces of a head,
// the paged cache's shape, the score scale and the partials.
struct TCPieceArgs {
  int ns, blockSize, maxBlocks, numBlocks, nkv;
  float scale;
  float *partO, *partML;
};

// stepTCPiece is one warp's piece of the tensor-core attention: keys
// [k0, k1) of KV head kvh for query heads h0..h0+nhs-1 (nhs <= 8), with
// q's fragments in qa and ql (splitQ4's parts; k-step s from dims
// c·D/4 + 4s of head h0+g). With one piece a head (A.ns == 1) it writes
// the heads' output at out, else its unnormalized partial at A.partO and
// its (max, sum) at A.partML, the max in base 2 of scaled scores.
template <int DK, class ARGS>
__device__ __forceinline__ void stepTCPiece(const ARGS& A, const bf16* kc, const bf16* vc, float* out, int kvh,
                                            int h0, int nhs, int split, int k0, int k1, const int* bt,
                                            const unsigned (&qa)[DK][4], const unsigned (&ql)[DK][2]) {
  constexpr int D = 16 * DK;
  const int ns = A.ns, bs = A.blockSize, maxB = A.maxBlocks, numB = A.numBlocks;
  const float sl2 = A.scale * 1.4426950408889634f;
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const long long kvRow = (long long)A.nkv * D;
  float o[DK][4];
#pragma unroll
  for (int t = 0; t < DK; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
  float m = NEG_INF, l = 0.f;  // head h0+g's running max and this lane's part of its sum
  int b0 = -32, myBlk = -1;    // lane i holds block table entry b0+i (-1: none)
  const long long kvOff = (long long)kvh * D;
  for (int c0 = k0; c0 < k1; c0 += 8) {
    if ((c0 + 7) / bs - b0 >= 32) {  // warp-uniform
      b0 = c0 / bs;
      const int bi = b0 + lane;
      myBlk = bi < maxB ? bt[bi] : -1;
      if (myBlk >= numB) myBlk = -1;
    }
    // This lane's keys: c0+g (its K run), c0+2c and c0+2c+1 (its V
    // runs), each as a block (of the table's window) and a slot in it,
    // counted on from c0's (one division a pass: a block of 8 slots or
    // more takes at most one step).
    const int bc = c0 / bs, rc = c0 - bc * bs;
    const int dk[3] = {g, 2 * c, 2 * c + 1};
    int blk[3], slot[3];
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      int bi = bc, r = rc + dk[j];
      while (r >= bs) r -= bs, ++bi;
      blk[j] = __shfl_sync(0xffffffffu, myBlk, (bi - b0) & 31);
      if (c0 + dk[j] >= k1) blk[j] = -1;
      slot[j] = r;
    }
    unsigned kw[2 * DK], vw[2][DK];  // K dims c·D/4 + [0, D/4); V dims g·D/8 + [0, D/8)
    ldWords<2 * DK>(kc + ((long long)blk[0] * bs + slot[0]) * kvRow + kvOff + c * (D / 4), blk[0] >= 0, kw);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      ldWords<DK>(vc + ((long long)blk[1 + i] * bs + slot[1 + i]) * kvRow + kvOff + g * (D / 8), blk[1 + i] >= 0,
                  vw[i]);
    float sc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int s = 0; s < DK; ++s) {
      mma_bf16(sc, qa[s], kw[2 * s], kw[2 * s + 1]);
      const unsigned a3[4] = {ql[s][0], 0u, ql[s][1], 0u};
      mma_bf16(sc, a3, kw[2 * s], kw[2 * s + 1]);
    }
    // Head h0+g's scores of keys c0+2c and c0+2c+1 (rows g and g+8).
    const float s0 = blk[1] >= 0 ? (sc[0] + sc[2]) * sl2 : NEG_INF;
    const float s1 = blk[2] >= 0 ? (sc[1] + sc[3]) * sl2 : NEG_INF;
    float mt = fmaxf(s0, s1);
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
    const float mn = fmaxf(m, mt);
    const bool none = mn == NEG_INF;  // no live key of this head yet
    const float f = none ? 1.f : fast_exp2(m - mn);  // 0 on the first live pass
    const float p0 = none ? 0.f : fast_exp2(s0 - mn), p1 = none ? 0.f : fast_exp2(s1 - mn);
    m = mn;
    l = l * f + p0 + p1;
    unsigned ph, pl;
    split_bf16(p0, p1, ph, pl);
    // The accumulator's heads are h0+2c and h0+2c+1: their factors live
    // in lanes 8c and 8c+4.
    const float fa = __shfl_sync(0xffffffffu, f, 8 * c), fb = __shfl_sync(0xffffffffu, f, 8 * c + 4);
#pragma unroll
    for (int t = 0; t < DK; ++t) {
      o[t][0] *= fa, o[t][1] *= fb, o[t][2] *= fa, o[t][3] *= fb;
      const unsigned x = vw[0][t], y = vw[1][t];  // dims 2t, 2t+1 of keys c0+2c and c0+2c+1
      unsigned a[4];
      a[0] = (x & 0xffffu) | (y << 16);      // dim 2t
      a[1] = (x >> 16) | (y & 0xffff0000u);  // dim 2t+1
      a[2] = a[0], a[3] = a[1];
      mma_bf16(o[t], a, ph, pl);
    }
  }
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  // This lane's accumulator columns are heads h0+2c and h0+2c+1, at dims
  // g·D/8 + 2t and 2t+1 (the rows of tile t).
  const int ha = 2 * c, hb = 2 * c + 1;
  float ia = 1.f, ib = 1.f;
  float* oa = nullptr;
  float* ob = nullptr;
  if (ns == 1) {
    const float la = __shfl_sync(0xffffffffu, l, 8 * c), lb = __shfl_sync(0xffffffffu, l, 8 * c + 4);
    ia = la > 0.f ? 1.f / la : 0.f, ib = lb > 0.f ? 1.f / lb : 0.f;
    oa = out + (long long)(h0 + ha) * D + g * (D / 8);
    ob = out + (long long)(h0 + hb) * D + g * (D / 8);
  } else {
    oa = A.partO + ((long long)(h0 + ha) * ns + split) * D + g * (D / 8);
    ob = A.partO + ((long long)(h0 + hb) * ns + split) * D + g * (D / 8);
    if (c == 0 && g < nhs) *(float2*)(A.partML + 2 * ((long long)(h0 + g) * ns + split)) = make_float2(m, l);
  }
#pragma unroll
  for (int t = 0; t < DK; t += 2) {
    if constexpr (DK == 1) {
      if (ha < nhs) oa[0] = o[0][0] * ia, oa[1] = o[0][2] * ia;
      if (hb < nhs) ob[0] = o[0][1] * ib, ob[1] = o[0][3] * ib;
    } else {
      if (ha < nhs)
        st4(oa + 2 * t, make_float4(o[t][0] * ia, o[t][2] * ia, o[t + 1][0] * ia, o[t + 1][2] * ia));
      if (hb < nhs)
        st4(ob + 2 * t, make_float4(o[t][1] * ib, o[t][3] * ib, o[t + 1][1] * ib, o[t + 1][3] * ib));
    }
  }
}

template <int DK>
__device__ __noinline__ void stepAttentionTC(const StepArgs& A, const char* kcl, const float* q, float* out, int ctx,
                                             const int* bt, int window) {
  static_assert(DK == 1 || DK == 2 || DK == 4 || DK == 8, "head dims 16, 32, 64 and 128");
  constexpr int D = 16 * DK;
  const int nh = A.nh, nkv = A.nkv, ns = A.ns;
  const int G = nh / nkv, perKV = (G + 7) >> 3, sets = nkv * perKV;  // sets of up to 8 heads of a group
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int first = window > 0 ? max(0, ctx - window) : 0;
  const int per = ((ctx - first + ns - 1) / ns + 7) & ~7;
  const bf16* kc = (const bf16*)kcl;
  const bf16* vc = (const bf16*)(kcl + A.layerBytes);
  for (int it = spreadWarp(); it < sets * ns; it += gridDim.x * 8) {
    const int set = it % sets, split = it / sets, kvh = set / perKV;
    const int h0 = kvh * G + (set % perKV) * 8, nhs = min(8, kvh * G + G - h0);
    const int k0 = first + split * per, k1 = min(ctx, k0 + per);
    unsigned qa[DK][4], ql[DK][2];
    const float* qh = q + (long long)(h0 + min(g, nhs - 1)) * D + c * (D / 4);
#pragma unroll
    for (int s = 0; s < DK; ++s) splitQ4(g < nhs ? ld4(qh + 4 * s) : make_float4(0.f, 0.f, 0.f, 0.f), qa[s], ql[s]);
    stepTCPiece<DK>(A, kc, vc, out, kvh, h0, nhs, split, k0, k1, bt, qa, ql);
  }
}

// attnTC is a batched step's per-token attention on tensor cores, as the
// decode step's (stepTCPiece): grid (sets, T, ceil(numSplits/4)), four
// warps a block, warp w taking piece blockIdx.z·4+w of token blockIdx.y's
// set (up to 8 query heads of one KV head), q's fragments in registers.
// It writes partials only (numSplits > 1), for attn_combine.
template <int DK>
__device__ __forceinline__ void attnTC(const float* q, const bf16* kc, const bf16* vc, const int* tokenSeq,
                                       const int* positions, const int* blockTables, int maxBlocks, int blockSize,
                                       int numBlocks, int H, int KVH, float scale, int numSplits, int qStride,
                                       float* partO, float* partML, int window, int flashRows) {
  constexpr int D = 16 * DK;
  const int t = blockIdx.y, seq = tokenSeq[t];
  if (leftToFlash(tokenSeq, t, seq, flashRows)) return;
  const int split = blockIdx.z * 4 + (threadIdx.x >> 5);
  if (split >= numSplits) return;
  const int G = H / KVH, perKV = (G + 7) >> 3, kvh = blockIdx.x / perKV;
  const int h0 = kvh * G + (blockIdx.x % perKV) * 8, nhs = min(8, kvh * G + G - h0);
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int ctx = positions[t] + 1;
  const int first = window > 0 ? max(0, ctx - window) : 0;
  const int per = ((ctx - first + numSplits - 1) / numSplits + 7) & ~7;
  const int k0 = first + split * per, k1 = min(ctx, k0 + per);
  const long long part = (long long)t * H * numSplits;
  const TCPieceArgs A{numSplits, blockSize, maxBlocks, numBlocks, KVH, scale, partO + part * D, partML + part * 2};
  unsigned qa[DK][4], ql[DK][2];
  const float* qh = q + (long long)t * qStride + (long long)(h0 + min(g, nhs - 1)) * D + c * (D / 4);
#pragma unroll
  for (int s = 0; s < DK; ++s) splitQ4(g < nhs ? ld4(qh + 4 * s) : make_float4(0.f, 0.f, 0.f, 0.f), qa[s], ql[s]);
  stepTCPiece<DK>(A, kc, vc, nullptr, kvh, h0, nhs, split, k0, k1, blockTables + (long long)seq * maxBlocks, qa, ql);
}

// stepMergePieces is the phase after stepAttentionTC's pieces (and a grid
// barrier): a warp per (head, 4 dims), lane i taking pieces i, i+32, ...,
// so that a head's merge is one round of loads spread over many warps
// rather than a chain of them in the last piece's warp. Every warp of a
// head reads the head's (max, sum) pairs; they are few.
__device__ __noinline__ void stepMergePieces(const StepArgs& A, float* out) {
  const int ns = A.ns, D = A.hd, nh = A.nh, lane = threadIdx.x & 31;
  const float* partO = A.partO;
  const float* partML = A.partML;
  const int chunks = D >> 2;
  for (int it = spreadWarp(); it < nh * chunks; it += gridDim.x * 8) {
    const int h = it / chunks, ch = it % chunks;
    float2 ml[STEP_MERGE_LANE];
    float4 po[STEP_MERGE_LANE];
    float M = NEG_INF;
#pragma unroll
    for (int j = 0; j < STEP_MERGE_LANE; ++j) {
      const int p = lane + 32 * j;
      ml[j] = make_float2(NEG_INF, 0.f);
      po[j] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (p < ns) {
        const long long at = (long long)h * ns + p;
        ml[j] = __ldcg((const float2*)(partML + 2 * at));
        po[j] = __ldcg((const float4*)(partO + at * D + 4 * ch));
      }
      M = fmaxf(M, ml[j].x);
    }
#pragma unroll
    for (int x = 16; x > 0; x >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, x));
    float L = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int j = 0; j < STEP_MERGE_LANE; ++j) {
      const float w = ml[j].x == NEG_INF ? 0.f : fast_exp2(ml[j].x - M);
      L += w * ml[j].y;
      acc.x += w * po[j].x, acc.y += w * po[j].y, acc.z += w * po[j].z, acc.w += w * po[j].w;
    }
    L = warpSum(L);
    acc.x = warpSum(acc.x), acc.y = warpSum(acc.y), acc.z = warpSum(acc.z), acc.w = warpSum(acc.w);
    if (lane == 0) {
      const float inv = L > 0.f ? 1.f / L : 0.f;
      st4(out + (long long)h * D + 4 * ch, make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv));
    }
  }
}
#endif

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

// A warp's rows a task in stepExpertDown, and its vector loads a row a
// batch: with a down projection's K of 768 (Qwen3-30B-A3B) one batch is a
// whole row. More registers for loads spilled (ptxas --verbose).
#define STEP_DOWN_ROWS 2
#define STEP_DOWN_VECS 3

// stepDownLoads issues a warp's batch of stepExpertDown's weight loads:
// rows n0.. of expert e, vectors vb, vb + 32, ... of each.
template <int R, int U>
__device__ __forceinline__ void stepDownLoads(uint4 (&wv)[R][U], const bf16* expDown, int e, int n0, int vb, int H, int I) {
  const bf16* base = expDown + ((long long)e * H + n0) * I;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = vb + u * 32;
      if (n0 + r < H && v < (I >> 3)) wv[r][u] = ldw16(base + (long long)r * I + v * 8);
    }
}

// stepExpertDown is a sparse MLP's down projections and the residual as one
// GEMV phase after barrier bar: hout = hmid + sum_j w[j] * down_j(eact_j)
// over the k chosen experts, in expert order as the unfused scatter_add
// sums them. A task is rows of hout for all k experts: warp w takes row
// group w % rg (rg = 8 / k groups of STEP_DOWN_ROWS rows when k < 8, else
// one) for experts w / rg, w / rg + 8 / rg, ... . Each row's experts meet
// in the block that owns it, so their outputs do not round-trip through
// memory and no barrier separates the products from the sum. A lane's
// products and the warp's sum run in dgemv's order. The next batch of a
// warp's weight loads (the next expert's or task's when this one's are
// done) is issued before the current batch's reductions, as in dgemv.
__device__ __forceinline__ void stepExpertDown(const StepArgs& A, const bf16* expDown, const int* ids, const float* wts,
                                               const float* eact, const float* hmid, float* hout) {
  constexpr int R = STEP_DOWN_ROWS, U = STEP_DOWN_VECS;
  __shared__ float red[STEP_MAXK][8 * R];
  const int H = A.H, I = A.moeI, k = A.topK, nvec = I >> 3;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rg = k >= 8 ? 1 : 8 / k, rows = R * rg;
  const int g = warp % rg, j0 = warp / rg, jstep = 8 / rg;
  const int tasks = (H + rows - 1) / rows;
  uint4 wv[R][U];
  int t = blockIdx.x;
  gridArrive(A.bar);
  if (t >= tasks) {
    gridWait(A.bar);
    return;
  }
  if (j0 < k) stepDownLoads<R, U>(wv, expDown, ids[j0], t * rows + g * R, lane, H, I);
  gridWait(A.bar);
  for (;;) {
    for (int j = j0; j < k; j += jstep) {
      const float* x = eact + (long long)j * I;
      float acc[R];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = 0.f;
      for (int vb = lane; vb < nvec; vb += 32 * U) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = vb + u * 32;
          if (v < nvec) {
            float xv[8];
            load8(x + v * 8, xv);
#pragma unroll
            for (int r = 0; r < R; ++r) {
              float wf[8];
              unpack8(wv[r][u], wf);
#pragma unroll
              for (int i = 0; i < 8; ++i) acc[r] += wf[i] * xv[i];
            }
          }
        }
        // This warp's next batch: the rest of this expert's rows, else its
        // next expert's, else its first expert's in the block's next task.
        int nt = t, nj = j, nvb = vb + 32 * U;
        if (nvb >= nvec) {
          nvb = lane;
          nj = j + jstep;
          if (nj >= k) {
            nj = j0;
            nt = t + gridDim.x;
          }
        }
        if (nt < tasks) stepDownLoads<R, U>(wv, expDown, ids[nj], nt * rows + g * R, nvb, H, I);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float sum = warpSum(acc[r]);
        if (lane == 0) red[j][g * R + r] = sum;
      }
    }
    __syncthreads();
    if (threadIdx.x < rows) {
      const int n = t * rows + threadIdx.x;
      if (n < H) {
        float acc = 0.f;
        for (int j = 0; j < k; ++j) acc += wts[j] * red[j][threadIdx.x];
        hout[n] = hmid[n] + acc;
      }
    }
    t += gridDim.x;
    if (t >= tasks) return;
    __syncthreads();  // red is rewritten by the next task
  }
}

// stepMoE is a layer's sparse MLP (after the o phase wrote hmid): the
// router's logits, the top-k computed by every block for itself (no
// barrier), each chosen expert's gate/up with SiLU as a GEMV phase of its
// own (an expert's weights are a base pointer into the stacked experts),
// then the experts' down projections, weighted sum and residual in one
// phase (stepExpertDown).
// Inlined: called as a function, every value live across the call was
// spilled, in the GEMV loops too (ptxas --verbose: 8 KB of spill stores).
__device__ __forceinline__ void stepMoE(const StepArgs& A, const StepLayer& L, const float* hmid, float* hout, float* rlog,
                                     float* eact, unsigned long long* stamps) {
  __shared__ float sW[STEP_MAXK];
  __shared__ int sId[STEP_MAXK];
  const int H = A.H, I = A.moeI, k = A.topK;
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
  stepExpertDown(A, L.expDown, sId, sW, eact, hmid, hout);
}

// stepPrefetchLayer asks L2 for layer L's o weights and the first
// A.pfGU bytes of its gate/up weights (StepArgs.pfGU).
template <bool F8W>
__device__ __forceinline__ void stepPrefetchLayer(const StepArgs& A, const StepLayer& L) {
  constexpr long long wb = F8W ? 1 : 2;  // bytes a weight
  stepPrefetchL2(L.o, (long long)A.H * A.nh * A.hd * wb);
  if (L.gu) stepPrefetchL2(L.gu, min(A.pfGU, 2LL * A.I * A.H * wb));
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
                        (A.E ? A.E + (long long)A.topK * A.moeI : 0);
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
    if (A.pfGU >= 0 && A.pfAt == 0) stepPrefetchLayer<F8W>(A, L);

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
    if (A.pfGU >= 0 && A.pfAt == 1) stepPrefetchLayer<F8W>(A, L);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (A.attnForm == STEP_ATTN_TC) {  // step.go sets it for head dims 16·DK and a bf16 cache only
      if constexpr (EPL == 1) {
        if (A.hd == 16)
          stepAttentionTC<1>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
        else
          stepAttentionTC<2>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
      } else if constexpr (EPL <= 4) {
        stepAttentionTC<2 * EPL>(A, kcl, qAttn, att, ctx, bt, (int)L.window);
      }
      if (A.ns > 1) {
        gridSync(A.bar);
        stepMergePieces(A, att);
      }
    } else
#endif
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
        stepMoE(A, L, hmid, hout, rlog, eact, stamp ? A.stamps + STEP_STAMPS * l : nullptr);
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

// attn_tc_bf16_<DK>: attnTC for head dims 16·DK (a bf16 cache); a trap
// before Ampere, where the backend does not launch it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define ATTN_TC_BODY(DK)                                                                                       \
  attnTC<DK>(q, kc, vc, tokenSeq, positions, blockTables, maxBlocks, blockSize, numBlocks, H, KVH, scale,     \
             numSplits, qStride, partO, partML, window, flashRows)
#else
#define ATTN_TC_BODY(DK) __trap()
#endif
#define INST_ATTN_TC(DK)                                                                                       \
  extern "C" __global__ void __launch_bounds__(128) attn_tc_bf16_##DK(                                       \
      const float* q, const bf16* kc, const bf16* vc, const int* tokenSeq, const int* positions,               \
      const int* blockTables, int maxBlocks, int blockSize, int numBlocks, int H, int KVH, float scale,        \
      int numSplits, int qStride, float* partO, float* partML, int window, int flashRows) {                    \
    PDL_ENTRY();                                                                                               \
    ATTN_TC_BODY(DK);                                                                                          \
  }
#if KUNIT(37)
INST_ATTN_TC(1)
INST_ATTN_TC(2)
INST_ATTN_TC(4)
INST_ATTN_TC(8)
#endif
