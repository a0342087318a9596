// llmserve CUDA kernels, compiled at run time by NVRTC for the device's
// architecture. No headers: bf16/f16 conversions are done by hand so the
// file compiles with any NVRTC without its include directory.
//
// Conventions: tensors are row-major; activations are f32; weights are
// f32, f16 or bf16 (one extern "C" entry point per dtype, suffix _f32,
// _f16, _bf16); sizes that can pass 2^31 are long long.

typedef unsigned short u16;
struct bf16 { u16 x; };
struct f16 { u16 x; };

#define NEG_INF (-__int_as_float(0x7f800000))

// The source is compiled as kernelUnits units in parallel (NVRTC compiles
// one program on one thread): each compile defines KUNIT_ID and
// instantiates only the kernels guarded by #if KUNIT(its id).
#ifdef KUNIT_ID
#define KUNIT(n) (KUNIT_ID == (n))
#else
#define KUNIT(n) 1
#endif

// Programmatic dependent launch (Hopper+, Options.EnablePDL). A kernel may
// then be launched to start while its predecessor drains, so each first waits for it
// (griddepcontrol.wait returns once the previous grid has completed and its
// writes are visible) and only then lets its own successor launch: at most
// two grids overlap, and no grid reads or writes activations early. Only
// dgemv does work before the wait: it loads weights, which no kernel writes.
// On older GPUs, or launched without the attribute, both are no-ops.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_WAIT()
#define PDL_LAUNCH()
#endif
#define PDL_ENTRY() \
  do {              \
    PDL_WAIT();     \
    PDL_LAUNCH();   \
  } while (0)

__device__ __forceinline__ float tof(float v) { return v; }
__device__ __forceinline__ float tof(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }
__device__ __forceinline__ float tof(f16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x));
  return f;
}

__device__ __forceinline__ u16 f2bf(float v) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return (u16)(u >> 16);
}
__device__ __forceinline__ u16 f2h(float v) {
  u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  return h;
}

// E4M3 (FP8): a KV cache of dtype F8 (scale 1) and FP8 weights (fp8.cu).
struct f8e4m3 { unsigned char x; };

// f8tof widens an E4M3 code: its exponent and mantissa bits placed in a
// float's low exponent bits are 2^-120 times the value (subnormal codes
// included), so one multiply by 2^120 finishes it.
__device__ __forceinline__ float f8tof(unsigned v) {
  return __uint_as_float(((v & 0x80u) << 24) | ((v & 0x7fu) << 20)) * 1.329227995784916e36f;  // 2^120
}
__device__ __forceinline__ float tof(f8e4m3 v) { return f8tof(v.x); }

// f8x8 widens the eight FP8 codes of lo, hi (low byte first) to floats. On
// sm_89 and later one cvt widens two codes to halves (exact: every E4M3
// value is a half), a fraction of f8tof's integer work a weight.
__device__ __forceinline__ void f8x8(unsigned lo, unsigned hi, float* o) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const unsigned w = j < 2 ? lo : hi;
    const u16 pair = (u16)((j & 1) ? w >> 16 : w & 0xffffu);
    unsigned h;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"(pair));
    o[2 * j] = tof(f16{(u16)(h & 0xffffu)});
    o[2 * j + 1] = tof(f16{(u16)(h >> 16)});
  }
#else
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = f8tof(((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xffu);
#endif
}

// f8x2bf widens two FP8 codes (the low 16 bits of v, low byte first) to a
// packed bf16 pair (exact: every E4M3 value is a bf16).
__device__ __forceinline__ unsigned f8x2bf(unsigned v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned h;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"((u16)(v & 0xffffu)));
  return (__float_as_uint(tof(f16{(u16)(h & 0xffffu)})) >> 16) | (__float_as_uint(tof(f16{(u16)(h >> 16)})) & 0xffff0000u);
#else
  return (__float_as_uint(f8tof(v & 0xffu)) >> 16) | (__float_as_uint(f8tof((v >> 8) & 0xffu)) & 0xffff0000u);
#endif
}

// f2e4m3 rounds to the nearest E4M3 value (ties to even), saturating at
// ±448, as ml.F8Bits does on the host.
__device__ __forceinline__ unsigned char f2e4m3(float f) {
  if (f != f) return 0x7f;
  unsigned char sign = 0;
  if (__float_as_uint(f) >> 31) {
    sign = 0x80;
    f = -f;
  }
  if (f >= 448.f) return sign | 0x7e;
  if (f < 0.015625f) return sign | (unsigned char)rintf(f * 512.f);  // subnormal: multiples of 2^-9
  int e;
  frexpf(f, &e);  // f in [2^(e-1), 2^e)
  const int exp = e - 1;
  float m = rintf(ldexpf(f, 3 - exp));
  int ex = exp;
  if (m == 16.f) {
    ex += 1;
    m = 8.f;
  }
  return sign | (unsigned char)((ex + 7) << 3) | (unsigned char)((int)m - 8);
}

__device__ __forceinline__ void stf(float* p, float v) { *p = v; }
__device__ __forceinline__ void stf(f8e4m3* p, float v) { p->x = f2e4m3(v); }
__device__ __forceinline__ void stf(bf16* p, float v) { p->x = f2bf(v); }
__device__ __forceinline__ void stf(f16* p, float v) { p->x = f2h(v); }

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// blockSum returns the sum of v over the block (blockDim.x a multiple of 32).
__device__ float blockSum(float v) {
  __shared__ float s[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0) s[w] = v;
  __syncthreads();
  if (w == 0) {
    v = (lane < (int)(blockDim.x >> 5)) ? s[lane] : 0.f;
    v = warpSum(v);
    if (lane == 0) s[0] = v;
  }
  __syncthreads();
  return s[0];
}

// ---- tensor-core helpers (Ampere and later: flash.cu, moe.cu) ----
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

// pack_bf16 rounds (lo, hi) to nearest even into a bf16 pair in one
// instruction (f2bf's integer rounding takes a dozen; flash attention packs
// every softmax weight).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// split_bf16 packs the bf16 halves of (a, b): hi rounds them, lo rounds
// what hi missed.
__device__ __forceinline__ void split_bf16(float a, float b, unsigned& hi, unsigned& lo) {
  hi = pack_bf16(a, b);
  lo = pack_bf16(a - __uint_as_float(hi << 16), b - __uint_as_float(hi & 0xffff0000u));
}

// fast_exp2 is 2^x by the MUFU unit alone (results below 2^-126 flush to
// 0): exp2f adds the scaling that keeps such results, which softmax
// weights beside a maximum of 1 do not need.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// smemAddr is p's address in the shared window (inline PTX: no header).
__device__ __forceinline__ unsigned smemAddr(const void* p) {
  unsigned a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
  const unsigned a = smemAddr(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_t(unsigned* r, const void* p) {
  const unsigned a = smemAddr(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// cp16 copies 16 bytes from global to shared memory asynchronously, or
// zero-fills them when !ok.
__device__ __forceinline__ void cp16(void* dst, const void* src, bool ok) {
  const unsigned d = smemAddr(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
}
// ldsm_x4_at, ldsm_x4_t_at and cp16_at take a shared-window address
// (smemAddr): offsets added to one base fold into the instructions'
// immediates.
__device__ __forceinline__ void ldsm_x4_at(unsigned* r, unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t_at(unsigned* r, unsigned a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void cp16_at(unsigned d, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}
#endif
