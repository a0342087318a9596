// ---- FP8 (E4M3) weights: one byte per value, a f32 scale per row ----
//
// The weight of row n is scales[n]·f8(w[n, k]) (f8tof: common.cu);
// products are summed unscaled and scaled once per row. Larger
// products take expert_mma's dense form (moe.cu).

// embedding_f8: dst[r, :] = scales[id]·f8(table[id, :]) for id = ids[r]
// (zeros for an id outside the vocabulary): a tied lm_head quantized to
// FP8 is also the embedding table. One block per row.
#if KUNIT(21)
extern "C" __global__ void embedding_f8(float* dst, const unsigned char* table, const float* scales, const int* ids, int D,
                                        int vocab) {
  PDL_ENTRY();
  const int r = blockIdx.x, id = ids[r];
  float* o = dst + (long long)r * D;
  if (id < 0 || id >= vocab) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = 0.f;
    return;
  }
  const unsigned char* t = table + (long long)id * D;
  const float s = scales[id];
  for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = f8tof(t[d]) * s;
}
#endif

// gemv_f8: dst[t, n] (row stride ldd) = scales[n] · Σ_k x[t, k]·f8(w[n, k])
// for t < T <= 8. Grid ceil(N/8), 8 warps a block, a warp per row, 16
// weights (16 bytes) a lane per step when K % 16 == 0.
#if KUNIT(21)
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
      f8x8(words[0], words[1], wf);
      f8x8(words[2], words[3], wf + 8);
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
