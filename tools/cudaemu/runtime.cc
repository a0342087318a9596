// cudaemu runtime: the parts of the CUDA driver API, NVRTC, cuBLAS and
// NCCL that ml/cuda calls, implemented on the CPU so that its tests run on
// a machine without a GPU. It checks what the kernels compute, not how fast:
// every CUDA thread is a fiber, the threads of a block run on one OS thread
// and switch at every barrier and warp collective (so a missing
// __syncthreads shows as wrong data), and blocks run on a pool of OS threads
// (all at once for a cooperative launch). Streams are synchronous; a
// captured stream records its operations into a graph that is replayed.
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <math.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu_rt.h"

extern char** environ;

// ---------------------------------------------------------------- fibers

extern "C" void cudaemu_switch(void** save, void* to);
extern "C" void cudaemu_trampoline(void);
asm(R"(
.text
.globl cudaemu_switch
.type cudaemu_switch,@function
cudaemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size cudaemu_switch,.-cudaemu_switch
.globl cudaemu_trampoline
.type cudaemu_trampoline,@function
cudaemu_trampoline:
  movq %r12, %rdi
  call cudaemu_fiber_main
  ud2
.size cudaemu_trampoline,.-cudaemu_trampoline
)");

CUDAEMU_TLS thread_local cudaemu_thread* cudaemu_cur;

namespace {

constexpr size_t kStack = 256 << 10;

typedef void (*Thunk)(void**);

struct Worker {  // per OS thread
  void* sched_sp = nullptr;
  std::vector<void*> stacks;
  std::vector<cudaemu_thread> threads;
  cudaemu_block blk;
  Thunk thunk = nullptr;
  void** params = nullptr;
  unsigned shmem = 0;            // the launch's dynamic shared memory, bytes
  unsigned char* dyn = nullptr;  // the block's dynamic shared memory
  unsigned dyncap = 0;
};
CUDAEMU_TLS thread_local Worker* tw;

void die(const char* fmt, const char* a = "", const char* b = "") {
  fprintf(stderr, "cudaemu: ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, "\n");
  fflush(stderr);
  abort();
}

void* new_stack() {
  void* p = mmap(nullptr, kStack + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap of a fiber stack failed");
  mprotect(p, 4096, PROT_NONE);  // guard page
  return p;
}

void init_fiber(cudaemu_thread* t) {
  uintptr_t top = ((uintptr_t)t->stack + kStack + 4096) & ~(uintptr_t)15;
  uintptr_t s = top - 64 - 16;
  *(uint64_t*)s = 0;                          // the slot cudaemu_switch skips
  *(uint64_t*)(s + 8) = 0;                    // r15
  *(uint64_t*)(s + 16) = 0;                   // r14
  *(uint64_t*)(s + 24) = 0;                   // r13
  *(uint64_t*)(s + 32) = (uint64_t)t;         // r12: the fiber's argument
  *(uint64_t*)(s + 40) = 0;                   // rbx
  *(uint64_t*)(s + 48) = 0;                   // rbp
  *(uint64_t*)(s + 56) = (uint64_t)&cudaemu_trampoline;
  t->sp = (void*)s;
}

void block_exit_check(cudaemu_block* b);

}  // namespace

namespace {
// switch_from leaves fiber t for the next live fiber of its block (or the
// scheduler when t was the last).
inline void switch_from(cudaemu_thread* t) {
  cudaemu_thread* n = t->next;
  if (n == t) return;  // the only live fiber: carry on
  cudaemu_cur = n;
  cudaemu_switch(&t->sp, n->sp);
}
}  // namespace

extern "C" void cudaemu_fiber_main(cudaemu_thread* t) {
  cudaemu_cur = t;
  tw->thunk(tw->params);
  t->done = 1;
  cudaemu_block* b = t->blk;
  b->alive--;
  // Unlink t from the ring: its predecessor is found by walking it.
  cudaemu_thread* p = t;
  while (p->next != t) p = p->next;
  p->next = t->next;
  block_exit_check(b);
  void* dead;
  if (b->alive == 0) {
    cudaemu_cur = nullptr;
    cudaemu_switch(&dead, tw->sched_sp);
  } else {
    cudaemu_cur = t->next;
    cudaemu_switch(&dead, t->next->sp);
  }
  die("a finished fiber was resumed");
}

extern "C" void cudaemu_yield(void) {
  cudaemu_thread* t = cudaemu_cur;
  if (t) switch_from(t);
}

namespace {

const uint64_t kSpinLimit = 2000000000ull;

inline void wait_gen(cudaemu_thread* t, const uint64_t* gen, uint64_t g, const char* what) {
  uint64_t n = 0;
  while (__atomic_load_n(gen, __ATOMIC_ACQUIRE) == g) {
    switch_from(t);
    if (++n == kSpinLimit) die("deadlock: a thread waits forever at %s", what);
  }
}

void release_block(cudaemu_block* b) {
  b->result = b->count;
  b->arrived = 0;
  b->count = 0;
  b->gen++;
}

void block_exit_check(cudaemu_block* b) {
  if (b->arrived > 0 && b->arrived == b->alive) release_block(b);
}

// run_block runs one block to completion on this OS thread.
void run_block(cudaemu_dim bid, cudaemu_dim bdim, cudaemu_dim gdim) {
  Worker* w = tw;
  if (w->shmem > w->dyncap) {
    free(w->dyn);
    w->dyncap = (w->shmem + 127) & ~127u;
    w->dyn = (unsigned char*)aligned_alloc(128, w->dyncap);
  }
  // Shared memory starts undefined: 0xff bytes (NaN) show a read of what
  // nobody wrote.
  if (w->shmem) memset(w->dyn, 0xff, w->shmem);
  const int n = (int)(bdim.x * bdim.y * bdim.z);
  while ((int)w->stacks.size() < n) w->stacks.push_back(new_stack());
  w->threads.resize(n);
  cudaemu_block* b = &w->blk;
  memset((void*)b, 0, sizeof *b);
  b->bid = bid;
  b->bdim = bdim;
  b->gdim = gdim;
  b->nthreads = b->alive = n;
  for (int i = 0; i < n; i++) {
    cudaemu_thread* t = &w->threads[i];
    memset((void*)t, 0, sizeof *t);
    t->tid = {(unsigned)i % bdim.x, ((unsigned)i / bdim.x) % bdim.y, (unsigned)i / (bdim.x * bdim.y)};
    t->blk = b;
    t->linear = i;
    t->lane = i & 31;
    t->warp = i >> 5;
    t->stack = w->stacks[i];
    t->next = &w->threads[(i + 1) % n];
    init_fiber(t);
  }
  cudaemu_cur = &w->threads[0];
  cudaemu_switch(&w->sched_sp, w->threads[0].sp);
  cudaemu_cur = nullptr;
}

}  // namespace

extern "C" void cudaemu_syncthreads(void) { (void)cudaemu_syncthreads_count(0); }

// cudaemu_dynsmem is the running block's dynamic shared memory (extern
// __shared__ arrays).
extern "C" void* cudaemu_dynsmem(void) {
  if (!tw->shmem) die("extern __shared__ used by a launch of no dynamic shared memory");
  return tw->dyn;
}

extern "C" int cudaemu_syncthreads_count(int pred) {
  cudaemu_thread* t = cudaemu_cur;
  cudaemu_block* b = t->blk;
  const uint64_t g = b->gen;
  b->count += pred;
  if (++b->arrived == b->alive) {
    release_block(b);
    return b->result;
  }
  wait_gen(t, &b->gen, g, "__syncthreads");
  return b->result;
}

extern "C" int cudaemu_syncthreads_or(int pred) { return cudaemu_syncthreads_count(pred) != 0; }

namespace {
// warp_sync waits for the lanes of mask; it returns the parity of the
// exchange buffer this collective uses.
inline int warp_sync(cudaemu_thread* t, cudaemu_warp* w, unsigned mask) {
  const int par = t->colls++ & 1;
  if (!(mask >> t->lane & 1)) die("a warp collective whose mask leaves out the calling lane");
  // Lanes past the block's end do not exist: they are not waited for.
  const int base = (int)t->warp * 32;
  const unsigned exist = t->blk->nthreads - base >= 32 ? 0xffffffffu : ((1u << (t->blk->nthreads - base)) - 1);
  const int want = __builtin_popcount(mask & exist);
  const uint64_t g = w->gen;
  if (++w->arrived == want) {
    w->arrived = 0;
    w->gen++;
    return par;
  }
  wait_gen(t, &w->gen, g, "a warp collective (a lane of the mask exited or diverged?)");
  return par;
}
}  // namespace

extern "C" void cudaemu_syncwarp(unsigned mask) {
  cudaemu_thread* t = cudaemu_cur;
  warp_sync(t, &t->blk->warps[t->warp], mask);
}

extern "C" uint64_t cudaemu_shfl(unsigned mask, uint64_t v, int src) {
  cudaemu_thread* t = cudaemu_cur;
  cudaemu_warp* w = &t->blk->warps[t->warp];
  const int par = t->colls & 1;
  w->buf[par][t->lane] = v;
  warp_sync(t, w, mask);
  return w->buf[par][src & 31];
}

extern "C" unsigned cudaemu_ballot(unsigned mask, int pred) {
  cudaemu_thread* t = cudaemu_cur;
  cudaemu_warp* w = &t->blk->warps[t->warp];
  const int par = t->colls & 1;
  w->buf[par][t->lane] = pred != 0;
  warp_sync(t, w, mask);
  unsigned r = 0;
  for (int l = 0; l < 32; l++)
    if ((mask >> l & 1) && w->buf[par][l]) r |= 1u << l;
  return r;
}

namespace {
inline float bf(unsigned short x) {
  const unsigned u = (unsigned)x << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline float lo16(unsigned r) { return bf((unsigned short)(r & 0xffff)); }
inline float hi16(unsigned r) { return bf((unsigned short)(r >> 16)); }
}  // namespace

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, fragments as the
// PTX ISA lays them out: g = lane/4, q = lane%4;
// A (16×16): a0 (g, 2q..2q+1), a1 (g+8, 2q..), a2 (g, 2q+8..), a3 (g+8, 2q+8..);
// B (16×8, k×n): b0 (k 2q..2q+1, n g), b1 (k 2q+8.., n g);
// C/D (16×8): c0,c1 (g, 2q..2q+1), c2,c3 (g+8, 2q..2q+1).
extern "C" void cudaemu_mma_bf16(float* c0, float* c1, float* c2, float* c3, unsigned a0, unsigned a1,
                                 unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
  cudaemu_thread* t = cudaemu_cur;
  cudaemu_warp* w = &t->blk->warps[t->warp];
  const int lane = t->lane, par = t->colls & 1;
  unsigned* a = w->a[par][lane];
  a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
  w->b[par][lane][0] = b0;
  w->b[par][lane][1] = b1;
  warp_sync(t, w, 0xffffffffu);
  const int g = lane >> 2, q = lane & 3;
  // This lane's rows of A (g, g+8) and columns of B (2q, 2q+1): row r of
  // A lives in lanes 4(r%8)..4(r%8)+3, column n of B in lanes 4n..4n+3.
  float A[2][16], B[2][16];
  for (int l = 0; l < 4; l++) {
    const unsigned* ra = w->a[par][4 * g + l];
    A[0][2 * l] = lo16(ra[0]), A[0][2 * l + 1] = hi16(ra[0]);
    A[1][2 * l] = lo16(ra[1]), A[1][2 * l + 1] = hi16(ra[1]);
    A[0][2 * l + 8] = lo16(ra[2]), A[0][2 * l + 9] = hi16(ra[2]);
    A[1][2 * l + 8] = lo16(ra[3]), A[1][2 * l + 9] = hi16(ra[3]);
    for (int j = 0; j < 2; j++) {
      const unsigned* rb = w->b[par][4 * (2 * q + j) + l];
      B[j][2 * l] = lo16(rb[0]), B[j][2 * l + 1] = hi16(rb[0]);
      B[j][2 * l + 8] = lo16(rb[1]), B[j][2 * l + 9] = hi16(rb[1]);
    }
  }
  float* c[4] = {c0, c1, c2, c3};
  for (int i = 0; i < 4; i++) {
    // Products of bf16 values are exact in f32; the sum is f32.
    const float* ar = A[i >> 1];
    const float* bc = B[i & 1];
    float acc = *c[i];
    for (int k = 0; k < 16; k++) acc = fmaf(ar[k], bc[k], acc);
    *c[i] = acc;
  }
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lane l gives the
// address of row l%8 of matrix l/8; for matrix i, lane l receives row l/4,
// columns 2(l%4), 2(l%4)+1 (with .trans: rows 2(l%4), 2(l%4)+1 of column l/4).
extern "C" void cudaemu_ldsm_x4(unsigned* r0, unsigned* r1, unsigned* r2, unsigned* r3, unsigned addr, int trans) {
  cudaemu_thread* t = cudaemu_cur;
  cudaemu_warp* w = &t->blk->warps[t->warp];
  const int lane = t->lane, par = t->colls & 1;
  w->ptr[par][lane] = cudaemu_smem_ptr(addr);
  warp_sync(t, w, 0xffffffffu);
  const void* const* ptr = w->ptr[par];
  unsigned* r[4] = {r0, r1, r2, r3};
  for (int i = 0; i < 4; i++) {
    unsigned short lo, hi;
    if (!trans) {
      const unsigned short* row = (const unsigned short*)ptr[i * 8 + lane / 4];
      lo = row[2 * (lane % 4)];
      hi = row[2 * (lane % 4) + 1];
    } else {
      lo = ((const unsigned short*)ptr[i * 8 + 2 * (lane % 4)])[lane / 4];
      hi = ((const unsigned short*)ptr[i * 8 + 2 * (lane % 4) + 1])[lane / 4];
    }
    *r[i] = (unsigned)lo | ((unsigned)hi << 16);
  }
}

// A 32-bit shared address is a window slot (bit 31) and the low 31 bits of
// the host address. Static __shared__ (thread-local storage of the kernel's
// module) and the dynamic buffer (the worker's heap) may lie in different
// 2 GiB windows; each thread maps up to two.
extern "C" unsigned cudaemu_smem32(const void* p) {
  cudaemu_thread* t = cudaemu_cur;
  const uint64_t win = ((uint64_t)p >> 31) + 1;
  for (unsigned slot = 0; slot < 2; slot++) {
    if (t->smem_win[slot] == 0) t->smem_win[slot] = win;
    if (t->smem_win[slot] == win) return (slot << 31) | (unsigned)((uint64_t)p & 0x7fffffffu);
  }
  die("shared memory spans more than two 2 GiB windows of the address space (rerun)");
  return 0;
}

extern "C" void* cudaemu_smem_ptr(unsigned a) {
  cudaemu_thread* t = cudaemu_cur;
  const uint64_t win = t->smem_win[a >> 31];
  if (win == 0) die("a shared-window address used before cvta.to.shared");
  return (void*)(((win - 1) << 31) | (a & 0x7fffffffu));
}

extern "C" void cudaemu_trap(const char* where) { die("__trap() in %s", where); }

// ---------------------------------------------------------------- workers

namespace {

struct Job {
  Thunk thunk;
  void** params;
  cudaemu_dim grid, block;
  unsigned shmem;
  int nblocks;
  std::atomic<int> next;
};

struct Pool {
  std::mutex mu;
  std::condition_variable cv, donecv;
  std::vector<std::thread> threads;
  uint64_t gen = 0;
  Job* job = nullptr;
  int want = 0;     // workers taking part in the job
  int running = 0;  // of those, still working
} pool;

std::mutex launch_mu;  // one launch at a time

void worker_main(int id) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);  // signals go to the Go threads
  tw = new Worker;
  uint64_t seen = 0;
  for (;;) {
    Job* j;
    {
      std::unique_lock<std::mutex> l(pool.mu);
      pool.cv.wait(l, [&] { return pool.gen != seen; });
      seen = pool.gen;
      if (id >= pool.want) continue;
      j = pool.job;
    }
    tw->thunk = j->thunk;
    tw->params = j->params;
    tw->shmem = j->shmem;
    for (;;) {
      const int i = j->next.fetch_add(1);
      if (i >= j->nblocks) break;
      const cudaemu_dim bid = {(unsigned)i % j->grid.x, ((unsigned)i / j->grid.x) % j->grid.y,
                               (unsigned)i / (j->grid.x * j->grid.y)};
      run_block(bid, j->block, j->grid);
    }
    std::lock_guard<std::mutex> l(pool.mu);
    if (--pool.running == 0) pool.donecv.notify_all();
  }
}

int default_workers() {
  const char* s = getenv("CUDAEMU_THREADS");
  if (s && atoi(s) > 0) return atoi(s);
  const int n = (int)std::thread::hardware_concurrency();
  return n > 0 ? n : 2;
}

// run_grid runs every block of a launch; coop puts each block on its own
// worker, all at once (their grid barriers spin on one another).
void run_grid(Thunk th, void** params, cudaemu_dim grid, cudaemu_dim block, unsigned shmem, bool coop) {
  Job j;
  j.thunk = th;
  j.params = params;
  j.grid = grid;
  j.block = block;
  j.shmem = shmem;
  j.nblocks = (int)(grid.x * grid.y * grid.z);
  j.next = 0;
  const int want = coop ? j.nblocks : std::min(j.nblocks, default_workers());
  std::unique_lock<std::mutex> l(pool.mu);
  while ((int)pool.threads.size() < want) {
    const int id = (int)pool.threads.size();
    pool.threads.emplace_back(worker_main, id);
    pool.threads.back().detach();
  }
  pool.job = &j;
  pool.want = want;
  pool.running = want;
  pool.gen++;
  pool.cv.notify_all();
  pool.donecv.wait(l, [] { return pool.running == 0; });
  pool.job = nullptr;
}

}  // namespace

// ---------------------------------------------------------------- driver API

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_INVALID_IMAGE = 200,
  CUDA_ERROR_INVALID_HANDLE = 400,
  CUDA_ERROR_NOT_FOUND = 500,
  CUDA_ERROR_LAUNCH_FAILED = 719,
  CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE = 720,
};

struct Comm;

namespace {

struct Func {
  Thunk thunk;
  const unsigned* sizes;
  const unsigned* aligns;
  unsigned nargs;
  std::string name;
  int maxDynShared = 0;  // cuFuncSetAttribute's opt-in
};

struct Module {
  void* handle;
  std::string path;
};

struct Op;
struct Graph {
  std::vector<Op*> ops;
};

struct Stream {
  bool capturing = false;
  Graph* graph = nullptr;
};

struct Op {
  enum Kind { Kernel, HtoD, DtoH, DtoD, Memset, Gemm, AllReduce } kind;
  // Kernel
  Func* fn = nullptr;
  cudaemu_dim grid{}, block{};
  unsigned shmem = 0;
  bool coop = false;
  std::vector<char> args;
  // copies and memset
  void* dst = nullptr;
  const void* src = nullptr;
  size_t n = 0;
  unsigned char val = 0;
  // Gemm
  int transa = 0, transb = 0, m = 0, nn = 0, k = 0, atype = 0, lda = 0, btype = 0, ldb = 0, ctype = 0, ldc = 0;
  float alpha = 0, beta = 0;
  const void *A = nullptr, *B = nullptr;
  void* C = nullptr;
  // AllReduce
  Comm* comm = nullptr;
  int dtype = 0, redop = 0;
};

int sms() {
  const char* s = getenv("CUDAEMU_SMS");
  return s && atoi(s) > 0 ? atoi(s) : 4;
}
int occupancy() {
  const char* s = getenv("CUDAEMU_OCCUPANCY");
  return s && atoi(s) > 0 ? atoi(s) : 1;
}
int devices() {
  const char* s = getenv("CUDAEMU_DEVICES");
  return s && atoi(s) > 0 ? atoi(s) : 1;
}
size_t total_mem() {
  const char* s = getenv("CUDAEMU_MEM_GIB");
  return (size_t)(s && atoi(s) > 0 ? atoi(s) : 8) << 30;
}
std::atomic<size_t> allocated{0};
std::mutex alloc_mu;
std::vector<std::pair<void*, size_t>> allocs;

void run_op(Op* o);

// CUDAEMU_TRACE set: every op run (and each graph launch) is written to
// stderr, one line each: what a step launches, to compare two builds.
const bool trace_ops = getenv("CUDAEMU_TRACE") != nullptr;

bool record(void* stream, Op* o) {
  Stream* s = (Stream*)stream;
  if (s && s->capturing) {
    s->graph->ops.push_back(o);
    return true;
  }
  return false;
}

void submit(void* stream, Op* o) {
  if (!record(stream, o)) {
    run_op(o);
    delete o;
  }
}

}  // namespace

extern "C" {

CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
  *v = 13000;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
  *n = devices();
  return CUDA_SUCCESS;
}
CUresult cuDeviceGet(int* d, int ord) {
  if (ord < 0 || ord >= devices()) return CUDA_ERROR_INVALID_VALUE;
  *d = ord;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, int dev) {
  snprintf(name, len, "cudaemu %d (CPU emulation)", dev);
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attr, int) {
  switch (attr) {
    case 75: *v = 9; break;       // compute capability major
    case 76: *v = 0; break;       // minor
    case 16: *v = sms(); break;   // multiprocessors
    case 1: *v = 1024; break;     // max threads per block
    case 8: *v = 49152; break;    // shared memory per block
    case 97: *v = 232448; break;  // shared memory per block (opt-in)
    case 10: *v = 32; break;      // warp size
    case 38: *v = 50 << 20; break;  // L2
    case 39: *v = 2048; break;    // max threads per SM
    case 81: *v = 233472; break;  // shared memory per SM
    default: *v = 0;
  }
  return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) {
  *b = total_mem();
  return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) {
  *ctx = (void*)(uintptr_t)(dev + 1);
  return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(void*) { return CUDA_SUCCESS; }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
  if (allocated + n > total_mem()) return CUDA_ERROR_OUT_OF_MEMORY;
  void* q = nullptr;
  if (posix_memalign(&q, 256, n ? n : 1)) return CUDA_ERROR_OUT_OF_MEMORY;
  // Fresh device memory is not zero: fill it with NaN patterns so that a
  // kernel reading what nobody wrote shows.
  memset(q, 0xff, n);
  allocated += n;
  std::lock_guard<std::mutex> l(alloc_mu);
  allocs.push_back({q, n});
  *p = (CUdeviceptr)q;
  return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
  std::lock_guard<std::mutex> l(alloc_mu);
  for (size_t i = 0; i < allocs.size(); i++)
    if (allocs[i].first == (void*)p) {
      allocated -= allocs[i].second;
      allocs[i] = allocs.back();
      allocs.pop_back();
      free((void*)p);
      return CUDA_SUCCESS;
    }
  return CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemGetInfo_v2(size_t* free_, size_t* total) {
  *total = total_mem();
  *free_ = total_mem() - allocated;
  return CUDA_SUCCESS;
}
CUresult cuMemAllocHost_v2(void** p, size_t n) {
  *p = malloc(n ? n : 1);
  return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void* p) {
  free(p);
  return CUDA_SUCCESS;
}

static Op* copy_op(Op::Kind k, void* dst, const void* src, size_t n) {
  Op* o = new Op;
  o->kind = k;
  o->dst = dst;
  o->src = src;
  o->n = n;
  return o;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) {
  memcpy((void*)d, h, n);
  return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void* s) {
  submit(s, copy_op(Op::HtoD, (void*)d, h, n));
  return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) {
  memcpy(h, (void*)d, n);
  return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void* s) {
  submit(s, copy_op(Op::DtoH, h, (void*)d, n));
  return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr src, size_t n, void* s) {
  submit(s, copy_op(Op::DtoD, (void*)d, (void*)src, n));
  return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void* s) {
  Op* o = copy_op(Op::Memset, (void*)d, nullptr, n);
  o->val = v;
  submit(s, o);
  return CUDA_SUCCESS;
}

// A module image is "CUDAEMU1", the length of a shared object, and its bytes.
CUresult cuModuleLoadData(void** mod, const void* image) {
  const char* im = (const char*)image;
  if (memcmp(im, "CUDAEMU1", 8) != 0) return CUDA_ERROR_INVALID_IMAGE;
  uint64_t n;
  memcpy(&n, im + 8, 8);
  char path[] = "/tmp/cudaemu-module-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return CUDA_ERROR_INVALID_IMAGE;
  size_t off = 0;
  while (off < n) {
    ssize_t w = write(fd, im + 16 + off, n - off);
    if (w <= 0) {
      close(fd);
      return CUDA_ERROR_INVALID_IMAGE;
    }
    off += w;
  }
  close(fd);
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  unlink(path);
  if (!h) {
    fprintf(stderr, "cudaemu: dlopen: %s\n", dlerror());
    return CUDA_ERROR_INVALID_IMAGE;
  }
  *mod = new Module{h, path};
  return CUDA_SUCCESS;
}
CUresult cuModuleUnload(void* mod) {
  // Kept loaded: graphs may still name its functions.
  delete (Module*)mod;
  return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(void** f, void* mod, const char* name) {
  Module* m = (Module*)mod;
  std::string n(name);
  void* th = dlsym(m->handle, ("cudaemu_thunk_" + n).c_str());
  void* sz = dlsym(m->handle, ("cudaemu_argsizes_" + n).c_str());
  void* al = dlsym(m->handle, ("cudaemu_argaligns_" + n).c_str());
  void* na = dlsym(m->handle, ("cudaemu_nargs_" + n).c_str());
  if (!th || !sz || !al || !na) return CUDA_ERROR_NOT_FOUND;
  *f = new Func{(Thunk)th, (const unsigned*)sz, (const unsigned*)al, *(const unsigned*)na, n, 0};
  return CUDA_SUCCESS;
}

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void*, int, size_t) {
  *n = occupancy();
  return CUDA_SUCCESS;
}

static CUresult launch(Func* f, cudaemu_dim grid, cudaemu_dim block, unsigned shmem, void* stream, void** params,
                       void** extra, bool coop) {
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  // Past 48 KiB a kernel must have opted in (cuFuncSetAttribute), as on a GPU.
  if (shmem > (unsigned)std::max(49152, f->maxDynShared)) {
    fprintf(stderr, "cudaemu: %s: %u bytes of dynamic shared memory, %d allowed\n", f->name.c_str(), shmem,
            std::max(49152, f->maxDynShared));
    return CUDA_ERROR_INVALID_VALUE;
  }
  const unsigned nt = block.x * block.y * block.z;
  if (nt == 0 || nt > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    fprintf(stderr, "cudaemu: %s: bad launch shape grid (%u,%u,%u) block (%u,%u,%u)\n", f->name.c_str(), grid.x, grid.y,
            grid.z, block.x, block.y, block.z);
    return CUDA_ERROR_INVALID_VALUE;
  }
  // A cooperative launch may not exceed the blocks resident at once.
  if (coop && (int)(grid.x * grid.y * grid.z) > sms() * occupancy()) return CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE;
  // Pack the arguments as the kernel's parameter buffer lays them out.
  std::vector<char> buf;
  std::vector<size_t> off(f->nargs);
  size_t o = 0;
  for (unsigned i = 0; i < f->nargs; i++) {
    o = (o + f->aligns[i] - 1) / f->aligns[i] * f->aligns[i];
    off[i] = o;
    o += f->sizes[i];
  }
  buf.resize(o + 8);
  if (params) {
    for (unsigned i = 0; i < f->nargs; i++) memcpy(buf.data() + off[i], params[i], f->sizes[i]);
  } else if (extra) {
    const void* bp = nullptr;
    size_t bsz = 0;
    for (int i = 0; extra[i] != (void*)0; i += 2) {
      if (extra[i] == (void*)1) bp = extra[i + 1];
      if (extra[i] == (void*)2) bsz = *(size_t*)extra[i + 1];
    }
    if (!bp) return CUDA_ERROR_INVALID_VALUE;
    if (bsz < o || bsz > ((o + 7) & ~(size_t)7)) {
      fprintf(stderr, "cudaemu: %s: argument buffer of %zu bytes, the kernel's parameters take %zu\n",
              f->name.c_str(), bsz, o);
      return CUDA_ERROR_INVALID_VALUE;
    }
    memcpy(buf.data(), bp, o);
  } else if (f->nargs > 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  Op* op = new Op;
  op->kind = Op::Kernel;
  op->fn = f;
  op->grid = grid;
  op->block = block;
  op->coop = coop;
  op->shmem = shmem;
  op->args = std::move(buf);
  op->n = o;
  submit(stream, op);
  return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shmem, void* stream, void** params, void** extra) {
  return launch((Func*)f, {gx, gy, gz}, {bx, by, bz}, shmem, stream, params, extra, false);
}

struct LaunchConfig {
  unsigned gx, gy, gz, bx, by, bz, shmem, pad;
  void* stream;
  struct Attr {
    unsigned id, pad;
    char val[64];
  } * attrs;
  unsigned nattrs, pad2;
};
CUresult cuLaunchKernelEx(const LaunchConfig* c, void* f, void** params, void** extra) {
  bool coop = false;
  for (unsigned i = 0; i < c->nattrs; i++)
    if (c->attrs[i].id == 2 && *(int*)c->attrs[i].val) coop = true;
  return launch((Func*)f, {c->gx, c->gy, c->gz}, {c->bx, c->by, c->bz}, c->shmem, c->stream, params, extra, coop);
}

// cuFuncSetAttribute: CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (8),
// up to the opt-in limit cuDeviceGetAttribute reports (97), and
// CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT (9), a hint (-1 or a
// percentage) with nothing to emulate.
CUresult cuFuncSetAttribute(void* f, int attr, int v) {
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  if (attr == 9) return v >= -1 && v <= 100 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
  if (attr != 8) return CUDA_ERROR_INVALID_VALUE;
  if (v < 0 || v > 232448) return CUDA_ERROR_INVALID_VALUE;
  ((Func*)f)->maxDynShared = v;
  return CUDA_SUCCESS;
}

CUresult cuStreamCreate(void** s, unsigned) {
  *s = new Stream;
  return CUDA_SUCCESS;
}
CUresult cuStreamDestroy_v2(void* s) {
  delete (Stream*)s;
  return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(void*) { return CUDA_SUCCESS; }
CUresult cuStreamBeginCapture_v2(void* s, int) {
  Stream* st = (Stream*)s;
  if (!st || st->capturing) return CUDA_ERROR_INVALID_VALUE;
  st->capturing = true;
  st->graph = new Graph;
  return CUDA_SUCCESS;
}
CUresult cuStreamEndCapture(void* s, void** g) {
  Stream* st = (Stream*)s;
  if (!st || !st->capturing) return CUDA_ERROR_INVALID_VALUE;
  st->capturing = false;
  *g = st->graph;
  st->graph = nullptr;
  return CUDA_SUCCESS;
}
CUresult cuGraphInstantiateWithFlags(void** exec, void* g, unsigned long long) {
  Graph* e = new Graph;
  for (Op* o : ((Graph*)g)->ops) e->ops.push_back(new Op(*o));
  *exec = e;
  return CUDA_SUCCESS;
}
CUresult cuGraphDestroy(void* g) {
  for (Op* o : ((Graph*)g)->ops) delete o;
  delete (Graph*)g;
  return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(void* g) { return cuGraphDestroy(g); }
CUresult cuGraphLaunch(void* exec, void* s) {
  Graph* g = (Graph*)exec;
  if (record(s, nullptr)) return CUDA_ERROR_INVALID_VALUE;  // no graph in a graph
  if (trace_ops) fprintf(stderr, "cudaemu: graph of %zu ops\n", g->ops.size());
  for (Op* o : g->ops) run_op(o);
  return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
  static const char* msg = "cudaemu error";
  *s = msg;
  (void)e;
  return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
  switch (e) {
    case 1: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case 2: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case 200: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
    case 400: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
    case 500: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case 720: *s = "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE"; break;
    default: *s = "CUDA_ERROR_UNKNOWN";
  }
  return CUDA_SUCCESS;
}

}  // extern "C"

// ---------------------------------------------------------------- NVRTC

namespace {
struct Program {
  std::string src, log;
  std::vector<char> image;
};
std::mutex compile_mu;
std::condition_variable compile_cv;
int compiling = 0;

std::string self_dir() {
  Dl_info info;
  if (dladdr((void*)&cuInit, &info) && info.dli_fname) {
    std::string p = info.dli_fname;
    char real[4096];
    if (realpath(p.c_str(), real)) p = real;
    return p.substr(0, p.rfind('/'));
  }
  return ".";
}

bool read_file(const std::string& p, std::string* out) {
  FILE* f = fopen(p.c_str(), "rb");
  if (!f) return false;
  char b[65536];
  size_t n;
  out->clear();
  while ((n = fread(b, 1, sizeof b, f)) > 0) out->append(b, n);
  fclose(f);
  return true;
}
}  // namespace

extern "C" {

#ifndef CUDAEMU_BUILD
#define CUDAEMU_BUILD 0
#endif
// The minor version is the emulator's build (build.sh): the backend's
// kernel cache key includes it.
int nvrtcVersion(int* maj, int* min) {
  *maj = 13;
  *min = CUDAEMU_BUILD;
  return 0;
}
int nvrtcCreateProgram(void** prog, const char* src, const char*, int, const char* const*, const char* const*) {
  Program* p = new Program;
  p->src = src;
  *prog = p;
  return 0;
}
int nvrtcDestroyProgram(void** prog) {
  delete (Program*)*prog;
  *prog = nullptr;
  return 0;
}
// nvrtcCompileProgram runs cudaemu-cc (beside this library, or
// $CUDAEMU_CC) on the source: it rewrites the inline PTX, adds a launch
// thunk per kernel and compiles a shared object with the host compiler.
int nvrtcCompileProgram(void* prog, int nopt, const char* const* opts) {
  Program* p = (Program*)prog;
  {
    std::unique_lock<std::mutex> l(compile_mu);
    compile_cv.wait(l, [] { return compiling < default_workers(); });
    compiling++;
  }
  char dir[] = "/tmp/cudaemu-cc-XXXXXX";
  if (!mkdtemp(dir)) return 6;
  const std::string d = dir, src = d + "/unit.cu", out = d + "/unit.so", log = d + "/log";
  FILE* f = fopen(src.c_str(), "wb");
  fwrite(p->src.data(), 1, p->src.size(), f);
  fclose(f);
  const char* cc = getenv("CUDAEMU_CC");
  std::string ccs = cc ? cc : self_dir() + "/cudaemu-cc";
  std::vector<std::string> args = {ccs, "-o", out, "-log", log};
  for (int i = 0; i < nopt; i++) args.push_back(opts[i]);
  args.push_back(src);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back((char*)a.c_str());
  argv.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawn(&pid, ccs.c_str(), nullptr, nullptr, argv.data(), environ);
  int status = 0;
  if (rc == 0) {
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  {
    std::lock_guard<std::mutex> l(compile_mu);
    compiling--;
    compile_cv.notify_one();
  }
  read_file(log, &p->log);
  std::string so;
  const bool ok = rc == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && read_file(out, &so);
  if (rc != 0) p->log += "cudaemu: cannot run " + ccs + "\n";
  std::string cmd = "rm -rf " + d;
  if (!getenv("CUDAEMU_KEEP") && system(cmd.c_str()) != 0) {
  }
  if (!ok) return 6;  // NVRTC_ERROR_COMPILATION
  p->image.resize(16 + so.size());
  memcpy(p->image.data(), "CUDAEMU1", 8);
  uint64_t n = so.size();
  memcpy(p->image.data() + 8, &n, 8);
  memcpy(p->image.data() + 16, so.data(), so.size());
  return 0;
}
int nvrtcGetProgramLogSize(void* prog, size_t* n) {
  *n = ((Program*)prog)->log.size() + 1;
  return 0;
}
int nvrtcGetProgramLog(void* prog, char* out) {
  const std::string& l = ((Program*)prog)->log;
  memcpy(out, l.c_str(), l.size() + 1);
  return 0;
}
int nvrtcGetCUBINSize(void* prog, size_t* n) {
  *n = ((Program*)prog)->image.size();
  return 0;
}
int nvrtcGetCUBIN(void* prog, char* out) {
  const auto& im = ((Program*)prog)->image;
  memcpy(out, im.data(), im.size());
  return 0;
}
int nvrtcGetPTXSize(void* prog, size_t* n) { return nvrtcGetCUBINSize(prog, n); }
int nvrtcGetPTX(void* prog, char* out) { return nvrtcGetCUBIN(prog, out); }
const char* nvrtcGetErrorString(int e) { return e == 6 ? "NVRTC_ERROR_COMPILATION" : "NVRTC error"; }

}  // extern "C"

// ---------------------------------------------------------------- cuBLAS

namespace {
struct Blas {
  void* stream = nullptr;
};

float load(const void* p, int type, size_t i) {
  switch (type) {
    case 0: return ((const float*)p)[i];
    case 2: {
      _Float16 h;
      memcpy(&h, (const char*)p + 2 * i, 2);
      return (float)h;
    }
    case 14: return bf(((const unsigned short*)p)[i]);
  }
  die("cublasGemmEx: data type %s not emulated", std::to_string(type).c_str());
  return 0;
}
void store(void* p, int type, size_t i, float v) {
  switch (type) {
    case 0: ((float*)p)[i] = v; return;
    case 2: {
      _Float16 h = (_Float16)v;
      memcpy((char*)p + 2 * i, &h, 2);
      return;
    }
    case 14: {
      unsigned u;
      memcpy(&u, &v, 4);
      if ((u & 0x7fffffffu) > 0x7f800000u)
        u = (u >> 16) | 0x40u;
      else
        u = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
      ((unsigned short*)p)[i] = (unsigned short)u;
      return;
    }
  }
  die("cublasGemmEx: data type %s not emulated", std::to_string(type).c_str());
}

// gemm: column-major C (m×n) = alpha op(A) op(B) + beta C, in f32.
void gemm(const Op* o) {
  const int m = o->m, n = o->nn, k = o->k;
  std::vector<float> A((size_t)m * k), B((size_t)n * k);
  for (int i = 0; i < m; i++)
    for (int p = 0; p < k; p++)
      A[(size_t)i * k + p] =
          load(o->A, o->atype, o->transa == 0 ? (size_t)i + (size_t)p * o->lda : (size_t)p + (size_t)i * o->lda);
  for (int j = 0; j < n; j++)
    for (int p = 0; p < k; p++)
      B[(size_t)j * k + p] =
          load(o->B, o->btype, o->transb == 0 ? (size_t)p + (size_t)j * o->ldb : (size_t)j + (size_t)p * o->ldb);
  auto part = [&](int j0, int j1) {
    for (int j = j0; j < j1; j++)
      for (int i = 0; i < m; i++) {
        const float* a = &A[(size_t)i * k];
        const float* b = &B[(size_t)j * k];
        float s = 0;
        for (int p = 0; p < k; p++) s = fmaf(a[p], b[p], s);
        const size_t ci = (size_t)i + (size_t)j * o->ldc;
        float v = o->alpha * s;
        if (o->beta != 0) v += o->beta * load(o->C, o->ctype, ci);
        store(o->C, o->ctype, ci, v);
      }
  };
  const int nt = std::min(default_workers(), std::max(1, n));
  std::vector<std::thread> ts;
  for (int t = 0; t < nt; t++) ts.emplace_back(part, n * t / nt, n * (t + 1) / nt);
  for (auto& t : ts) t.join();
}
}  // namespace

extern "C" {
int cublasCreate_v2(void** h) {
  *h = new Blas;
  return 0;
}
int cublasDestroy_v2(void* h) {
  delete (Blas*)h;
  return 0;
}
int cublasSetStream_v2(void* h, void* s) {
  ((Blas*)h)->stream = s;
  return 0;
}
int cublasSetWorkspace_v2(void*, void*, size_t) { return 0; }
int cublasGetVersion_v2(void*, int* v) {
  *v = 130000;
  return 0;
}
int cublasGemmEx(void* h, int transa, int transb, int m, int n, int k, const void* alpha, const void* A, int atype,
                 int lda, const void* B, int btype, int ldb, const void* beta, void* C, int ctype, int ldc,
                 int compute, int) {
  if (compute != 68) die("cublasGemmEx: compute type %s not emulated", std::to_string(compute).c_str());
  if (m < 0 || n < 0 || k < 0 || (transa > 1) || (transb > 1)) return 7;  // CUBLAS_STATUS_INVALID_VALUE
  Op* o = new Op;
  o->kind = Op::Gemm;
  o->transa = transa, o->transb = transb, o->m = m, o->nn = n, o->k = k;
  o->A = A, o->atype = atype, o->lda = lda, o->B = B, o->btype = btype, o->ldb = ldb;
  o->C = C, o->ctype = ctype, o->ldc = ldc;
  o->alpha = *(const float*)alpha;
  o->beta = *(const float*)beta;
  submit(((Blas*)h)->stream, o);
  return 0;
}
}

// ---------------------------------------------------------------- NCCL

struct Comm {
  struct Group* g;
  int rank;
};
struct Group {
  int n;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t gen = 0;
  int arrived = 0;
  std::vector<std::pair<const void*, void*>> bufs;
  size_t count = 0;
};

namespace {
void allreduce(const Op* o) {
  Group* g = o->comm->g;
  std::unique_lock<std::mutex> l(g->mu);
  const uint64_t gen = g->gen;
  g->bufs[o->comm->rank] = {o->src, o->dst};
  g->count = o->n;
  if (++g->arrived == g->n) {
    std::vector<float> sum(o->n, 0.f);
    for (int r = 0; r < g->n; r++) {
      const float* s = (const float*)g->bufs[r].first;
      for (size_t i = 0; i < o->n; i++) sum[i] += s[i];
    }
    for (int r = 0; r < g->n; r++) memcpy(g->bufs[r].second, sum.data(), o->n * 4);
    g->arrived = 0;
    g->gen++;
    g->cv.notify_all();
    return;
  }
  g->cv.wait(l, [&] { return g->gen != gen; });
}
}  // namespace

extern "C" {
int ncclGetVersion(int* v) {
  *v = 22800;
  return 0;
}
int ncclCommInitAll(Comm** comms, int n, const int*) {
  Group* g = new Group;
  g->n = n;
  g->bufs.resize(n);
  for (int r = 0; r < n; r++) comms[r] = new Comm{g, r};
  return 0;
}
int ncclAllReduce(const void* send, void* recv, size_t count, int dtype, int op, Comm* comm, void* stream) {
  if (dtype != 7 || op != 0) die("ncclAllReduce: only the f32 sum is emulated");
  Op* o = new Op;
  o->kind = Op::AllReduce;
  o->src = send;
  o->dst = recv;
  o->n = count;
  o->comm = comm;
  submit(stream, o);
  return 0;
}
int ncclCommDestroy(Comm* c) {
  delete c;
  return 0;
}
int ncclCommAbort(Comm* c) {
  delete c;
  return 0;
}
const char* ncclGetErrorString(int) { return "nccl error (cudaemu)"; }
}

// ---------------------------------------------------------------- ops

namespace {
void run_op(Op* o) {
  if (trace_ops) {
    switch (o->kind) {
      case Op::Kernel:
        fprintf(stderr, "cudaemu: kernel %s grid (%u,%u,%u) block (%u,%u,%u)%s\n", o->fn->name.c_str(), o->grid.x,
                o->grid.y, o->grid.z, o->block.x, o->block.y, o->block.z, o->coop ? " cooperative" : "");
        break;
      case Op::HtoD: fprintf(stderr, "cudaemu: copy to the device, %zu bytes\n", (size_t)o->n); break;
      case Op::DtoH: fprintf(stderr, "cudaemu: copy to the host, %zu bytes\n", (size_t)o->n); break;
      case Op::DtoD: fprintf(stderr, "cudaemu: copy on the device, %zu bytes\n", (size_t)o->n); break;
      case Op::Memset: fprintf(stderr, "cudaemu: memset, %zu bytes\n", (size_t)o->n); break;
      case Op::Gemm: fprintf(stderr, "cudaemu: gemm m %d n %d k %d\n", o->m, o->nn, o->k); break;
      case Op::AllReduce: fprintf(stderr, "cudaemu: all-reduce\n"); break;
    }
  }
  switch (o->kind) {
    case Op::Kernel: {
      std::lock_guard<std::mutex> l(launch_mu);
      std::vector<char> args = o->args;  // the kernel may not modify the recorded copy
      std::vector<void*> params(o->fn->nargs);
      size_t off = 0;
      for (unsigned i = 0; i < o->fn->nargs; i++) {
        off = (off + o->fn->aligns[i] - 1) / o->fn->aligns[i] * o->fn->aligns[i];
        params[i] = args.data() + off;
        off += o->fn->sizes[i];
      }
      run_grid(o->fn->thunk, params.data(), o->grid, o->block, o->shmem, o->coop);
      break;
    }
    case Op::HtoD:
    case Op::DtoH:
    case Op::DtoD: memmove(o->dst, o->src, o->n); break;
    case Op::Memset: memset(o->dst, o->val, o->n); break;
    case Op::Gemm: gemm(o); break;
    case Op::AllReduce: allreduce(o); break;
  }
}
}  // namespace
