// cudaemu: the state a kernel thread sees, shared by the runtime
// (runtime.cc) and the kernel units (emu_kernel.h).
#pragma once
#include <cstdint>

struct cudaemu_dim {
  unsigned x, y, z;
};

struct cudaemu_block;

// One CUDA thread: a fiber of the block's OS thread.
struct cudaemu_thread {
  cudaemu_dim tid;
  cudaemu_block* blk;
  unsigned linear, lane, warp;
  void* sp;             // saved stack pointer while switched out
  void* stack;          // its stack (owned by the worker's cache)
  int done;
  uint64_t smem_win[2];  // this thread's shared windows: 2 GiB-aligned bases >> 31, plus 1 (0: unset)
  unsigned colls;       // warp collectives this thread has joined (buffer parity)
  cudaemu_thread* next; // the next live fiber of the block (a ring)
};

// A warp's exchange area, double-buffered by the parity of the collective
// so that one barrier per collective suffices: a lane can only write
// buffer k+2 after every lane has passed barrier k+1, i.e. read buffer k.
struct cudaemu_warp {
  uint64_t gen;
  int arrived;
  uint64_t buf[2][32];
  const void* ptr[2][32];
  unsigned a[2][32][4], b[2][32][2];
};

struct cudaemu_block {
  cudaemu_dim bid, bdim, gdim;
  int nthreads, alive;
  // __syncthreads
  uint64_t gen;
  int arrived, count, result;
  cudaemu_warp warps[32];
};

// The runtime's two thread-locals are few bytes of static TLS, so every
// module reaches them without a call (the fiber switch leaves the floating-
// point control registers alone too: no kernel changes them).
#define CUDAEMU_TLS __attribute__((tls_model("initial-exec")))

extern "C" {
extern CUDAEMU_TLS thread_local cudaemu_thread* cudaemu_cur;
void cudaemu_yield(void);
void cudaemu_syncthreads(void);
int cudaemu_syncthreads_count(int pred);
int cudaemu_syncthreads_or(int pred);
void cudaemu_syncwarp(unsigned mask);
uint64_t cudaemu_shfl(unsigned mask, uint64_t v, int srcLane);
unsigned cudaemu_ballot(unsigned mask, int pred);
void cudaemu_mma_bf16(float* c0, float* c1, float* c2, float* c3, unsigned a0, unsigned a1, unsigned a2,
                      unsigned a3, unsigned b0, unsigned b1);
void cudaemu_ldsm_x4(unsigned* r0, unsigned* r1, unsigned* r2, unsigned* r3, unsigned addr, int trans);
unsigned cudaemu_smem32(const void* p);
void* cudaemu_smem_ptr(unsigned a);
void* cudaemu_dynsmem(void);
void cudaemu_trap(const char* where);
}
