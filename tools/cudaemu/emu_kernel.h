// cudaemu: what a CUDA kernel unit needs to compile as host C++ (force-
// included by cudaemu-cc). Each CUDA thread is a fiber; a block's fibers
// share one OS thread, so __shared__ is static thread_local storage.
#pragma once
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <type_traits>

#include "emu_rt.h"

#define __device__
#define __host__
#define __global__ __attribute__((annotate("cudaemu_kernel")))
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__ __restrict
#define __shared__ static thread_local
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))

#define threadIdx (cudaemu_cur->tid)
#define blockIdx (cudaemu_cur->blk->bid)
#define blockDim (cudaemu_cur->blk->bdim)
#define gridDim (cudaemu_cur->blk->gdim)
#define warpSize 32

struct __attribute__((aligned(8))) float2 {
  float x, y;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
  unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
  unsigned x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
  int x, y;
};
struct __attribute__((aligned(16))) int4 {
  int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b) {
  return a < b ? a : b;
}
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b) {
  return a > b ? a : b;
}

inline float __int_as_float(int v) { return __builtin_bit_cast(float, v); }
inline float __uint_as_float(unsigned v) { return __builtin_bit_cast(float, v); }
inline unsigned __float_as_uint(float f) { return __builtin_bit_cast(unsigned, f); }
inline int __float_as_int(float f) { return __builtin_bit_cast(int, f); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline int __float2int_rn(float x) { return (int)rintf(x); }
inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
inline int __ffs(int v) { return __builtin_ffs(v); }

template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
template <class T>
inline T __ldg(const T* p) {
  return *p;
}

inline void __syncthreads() { cudaemu_syncthreads(); }
inline int __syncthreads_count(int p) { return cudaemu_syncthreads_count(p != 0); }
inline int __syncthreads_or(int p) { return cudaemu_syncthreads_or(p != 0); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cudaemu_syncwarp(mask); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
#define __trap() cudaemu_trap(__func__)

template <class T>
inline T cudaemu_shfl_t(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a wide type");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof(T));
  b = cudaemu_shfl(mask, b, src);
  T r;
  memcpy(&r, &b, sizeof(T));
  return r;
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int laneMask, int width = 32) {
  const int lane = (int)cudaemu_cur->lane;
  int src = lane ^ laneMask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return cudaemu_shfl_t(mask, v, src);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int srcLane, int width = 32) {
  const int lane = (int)cudaemu_cur->lane;
  return cudaemu_shfl_t(mask, v, (lane & ~(width - 1)) + (srcLane & (width - 1)));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = (int)cudaemu_cur->lane;
  int src = lane + (int)delta;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return cudaemu_shfl_t(mask, v, src);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = (int)cudaemu_cur->lane;
  int src = lane - (int)delta;
  if (src < (lane & ~(width - 1))) src = lane;
  return cudaemu_shfl_t(mask, v, src);
}
inline unsigned __ballot_sync(unsigned mask, int p) { return cudaemu_ballot(mask, p != 0); }
inline int __any_sync(unsigned mask, int p) { return cudaemu_ballot(mask, p != 0) != 0; }
inline int __all_sync(unsigned mask, int p) { return cudaemu_ballot(mask, p != 0) == (mask & cudaemu_ballot(mask, 1)); }

inline float atomicAdd(float* p, float v) {
  std::atomic_ref<float> a(*p);
  float old = a.load();
  while (!a.compare_exchange_weak(old, old + v)) {
  }
  return old;
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline int atomicMax(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline int atomicExch(int* p, int v) { return std::atomic_ref<int>(*p).exchange(v); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).exchange(v); }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
  std::atomic_ref<unsigned>(*p).compare_exchange_strong(cmp, v);
  return cmp;
}
inline int atomicCAS(int* p, int cmp, int v) {
  std::atomic_ref<int>(*p).compare_exchange_strong(cmp, v);
  return cmp;
}

// ---- what cudaemu-cc puts in place of the kernels' inline PTX ----
inline void cudaemu_nop() {}
inline float cudaemu_h2f(unsigned short h) { return (float)*(const _Float16*)&h; }
inline unsigned short cudaemu_f2h(float f) {
  _Float16 h = (_Float16)f;  // round to nearest even
  unsigned short r;
  memcpy(&r, &h, 2);
  return r;
}
// cvt.rn.bf16x2.f32 d, a, b: a rounded (nearest even) to d's high half, b
// to its low half; NaN to the canonical 0x7fff.
inline unsigned short cudaemu_f2bf(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline unsigned cudaemu_f2bf2(float a, float b) { return (unsigned)cudaemu_f2bf(a) << 16 | cudaemu_f2bf(b); }
// ex2.approx.ftz.f32: 2^x, subnormal inputs and results flushed to 0.
inline float cudaemu_ex2_ftz(float x) {
  if (fabsf(x) < FLT_MIN) x = 0.f;
  const float y = exp2f(x);
  return y < FLT_MIN ? 0.f : y;
}
// cvt.rn.f16x2.e4m3x2: the low byte's E4M3 value to the low half, the high
// byte's to the high half (exact: every E4M3 value is a half).
inline unsigned cudaemu_e4m3x2_f16x2(unsigned short pair) {
  unsigned r = 0;
  for (int j = 0; j < 2; ++j) {
    const unsigned c = (pair >> (8 * j)) & 0xffu, e = (c >> 3) & 15u, m = c & 7u;
    float v = e ? ldexpf(1.0f + m / 8.0f, (int)e - 7) : ldexpf(m / 8.0f, -6);
    if ((c & 0x7fu) == 0x7fu) v = NAN;
    r |= (unsigned)cudaemu_f2h((c & 0x80u) ? -v : v) << (16 * j);
  }
  return r;
}
inline void cudaemu_cp16(unsigned dst, const void* src, int n) {
  char* d = (char*)cudaemu_smem_ptr(dst);
  if (n == 16)
    memcpy(d, src, 16);
  else {
    memset(d, 0, 16);
    if (n > 0) memcpy(d, src, n);
  }
}
inline void cudaemu_ld_v2(unsigned& x, unsigned& y, const void* p) {
  const unsigned* q = (const unsigned*)p;
  x = q[0];
  y = q[1];
}
inline void cudaemu_ld_v4(unsigned& x, unsigned& y, unsigned& z, unsigned& w, const void* p) {
  const unsigned* q = (const unsigned*)p;
  x = q[0];
  y = q[1];
  z = q[2];
  w = q[3];
}
inline unsigned cudaemu_ld_acquire(const void* p) {
  cudaemu_yield();  // a poll: let the block's other fibers and other blocks run
  return std::atomic_ref<unsigned>(*(unsigned*)p).load(std::memory_order_acquire);
}
inline unsigned cudaemu_ld_relaxed(const void* p) {
  cudaemu_yield();
  return std::atomic_ref<unsigned>(*(unsigned*)p).load(std::memory_order_relaxed);
}
inline void cudaemu_st_release(void* p, unsigned v) {
  std::atomic_ref<unsigned>(*(unsigned*)p).store(v, std::memory_order_release);
}
inline void cudaemu_fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned cudaemu_atom_add_release(void* p, unsigned v) {
  return std::atomic_ref<unsigned>(*(unsigned*)p).fetch_add(v, std::memory_order_acq_rel);
}
