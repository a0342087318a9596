// ---- FP8 (E4M3) weights: one byte per value, a f32 scale per row ----
//
// The weight of row n is scales[n]·f8(w[n, k]) (f8tof: common.cu);
// products are summed unscaled and scaled once per row. Larger
// products take expert_mma's dense form (moe.cu).

// gemv_f8: dst[t, n] (row stride ldd) = scales[n] · Σ_k x[t, k]·f8(w[n, k])
// for t < T <= 8. Grid ceil(N/8), 8 warps a block, a warp per row, 16
// weights (16 bytes) a lane per step when K % 16 == 0.
#if KUNIT(1)
extern "C" __global__ void gemv_f8(float* dst, int ldd, const float* x, int ldx, const unsigned char* w,
                                   const float* scales, int N, int K, int T) {
  PDL_ENTRY();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * 8 + warp;
  if (n >= N) return;
  const unsigned char* wr = w + (long long)n * K;
  float acc[8];
#pragma unroll
  for (int t = 0; t < 8; ++t) acc[t] = 0.f;
  if ((K & 15) == 0 && (ldx & 3) == 0) {
    for (int k = lane * 16; k < K; k += 512) {
      const uint4 wv = *(const uint4*)(wr + k);
      const unsigned words[4] = {wv.x, wv.y, wv.z, wv.w};
      float wf[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) wf[i] = f8tof(words[i >> 2] >> (8 * (i & 3)) & 0xffu);
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        if (t < T) {
          const float4* xr = (const float4*)(x + (long long)t * ldx + k);
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const float4 xv = xr[q];
            acc[t] += xv.x * wf[4 * q] + xv.y * wf[4 * q + 1] + xv.z * wf[4 * q + 2] + xv.w * wf[4 * q + 3];
          }
        }
      }
    }
  } else {
    for (int k = lane; k < K; k += 32) {
      const float wf = f8tof(wr[k]);
#pragma unroll
      for (int t = 0; t < 8; ++t)
        if (t < T) acc[t] += x[(long long)t * ldx + k] * wf;
    }
  }
  const float s = scales[n];
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    if (t < T) {
      const float v = warpSum(acc[t]);
      if (lane == 0) dst[(long long)t * ldd + n] = v * s;
    }
  }
}
#endif
