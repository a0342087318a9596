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
