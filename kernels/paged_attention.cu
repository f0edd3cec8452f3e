// teal's attention kernels over the paged KV pool (CUDA forms of the custom ops in src/models/paged_attention.rs,
// whose CPU implementations are the reference these are tested against: tests/cuda_kernels.rs).
//
// Pool layout (both keys and values, always f32): [slots, kv_heads, head_dim], slot = block * block_size + offset.
// A ragged batch: token t belongs to sequence token_seq[t] at absolute position token_pos[t]; block_tables is
// [sequences, max_blocks] (row-major, each row padded), listing the pool blocks that hold a sequence's positions.

#include <math.h>
#include <stdint.h>

#define TEAL_WARPS 4
#define TEAL_MAX_HEAD_DIM 256
#define TEAL_PER_LANE (TEAL_MAX_HEAD_DIM / 32)

// write_kv: pool[slot_mapping[t]] = src[t] for each new token (one row = kv_heads * head_dim floats).
// Grid: one block per token. Slots were bounds-checked on the host.
extern "C" __global__ void teal_write_kv(float *pool, const float *src, const uint32_t *slot_mapping,
                                         uint32_t row) {
  const uint32_t t = blockIdx.x;
  const uint64_t dst = (uint64_t)slot_mapping[t] * row;
  const uint64_t from = (uint64_t)t * row;
  for (uint32_t i = threadIdx.x; i < row; i += blockDim.x) {
    pool[dst + i] = src[from + i];
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// paged_attention: out[t, h] = softmax(q[t, h] . K[0..=pos] * scale) V[0..=pos], reading K and V for the query
// head's kv head (h / (heads / kv_heads)) straight from the pool through the sequence's block table.
//
// Grid: (heads, tokens); block: TEAL_WARPS warps. Each warp walks every TEAL_WARPS-th position with an online
// softmax (running max, running sum, running weighted V held in registers, head_dim / 32 values per lane); the
// warps' partial results are merged through shared memory at the end. No limit on the sequence length; head_dim
// up to TEAL_MAX_HEAD_DIM (the host checks).
extern "C" __global__ void teal_paged_attention(float *out, const float *q, const float *k_pool,
                                                const float *v_pool, const uint32_t *token_seq,
                                                const uint32_t *token_pos, const uint32_t *block_tables,
                                                uint32_t max_blocks, uint32_t block_size, uint32_t num_heads,
                                                uint32_t num_kv_heads, uint32_t head_dim, float scale) {
  const uint32_t h = blockIdx.x;
  const uint32_t t = blockIdx.y;
  const uint32_t warp = threadIdx.x / 32;
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t kvh = h / (num_heads / num_kv_heads);
  const uint32_t *table = block_tables + (uint64_t)token_seq[t] * max_blocks;
  const uint32_t last = token_pos[t];
  const float *qv = q + ((uint64_t)t * num_heads + h) * head_dim;

  float qr[TEAL_PER_LANE];
  float acc[TEAL_PER_LANE];
#pragma unroll
  for (int i = 0; i < TEAL_PER_LANE; i++) {
    const uint32_t d = lane + 32 * i;
    qr[i] = d < head_dim ? qv[d] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY;
  float l = 0.0f;
  for (uint32_t p = warp; p <= last; p += TEAL_WARPS) {
    const uint64_t slot = (uint64_t)table[p / block_size] * block_size + p % block_size;
    const uint64_t off = (slot * num_kv_heads + kvh) * head_dim;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < TEAL_PER_LANE; i++) {
      const uint32_t d = lane + 32 * i;
      if (d < head_dim) s += qr[i] * k_pool[off + d];
    }
    s = warp_sum(s) * scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float w = expf(s - m_new);
    l = l * correction + w;
#pragma unroll
    for (int i = 0; i < TEAL_PER_LANE; i++) {
      const uint32_t d = lane + 32 * i;
      if (d < head_dim) acc[i] = acc[i] * correction + w * v_pool[off + d];
    }
    m = m_new;
  }

  __shared__ float warp_m[TEAL_WARPS];
  __shared__ float warp_l[TEAL_WARPS];
  __shared__ float warp_acc[TEAL_WARPS][TEAL_MAX_HEAD_DIM];
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < TEAL_PER_LANE; i++) {
    const uint32_t d = lane + 32 * i;
    if (d < head_dim) warp_acc[warp][d] = acc[i];
  }
  __syncthreads();
  // Warps that saw no position (last < warp) have m = -inf and weigh zero; warp 0 always sees position 0.
  float m_all = warp_m[0];
  for (int w = 1; w < TEAL_WARPS; w++) m_all = fmaxf(m_all, warp_m[w]);
  float weight[TEAL_WARPS];
  float l_all = 0.0f;
  for (int w = 0; w < TEAL_WARPS; w++) {
    weight[w] = warp_l[w] > 0.0f ? expf(warp_m[w] - m_all) : 0.0f;
    l_all += warp_l[w] * weight[w];
  }
  float *o = out + ((uint64_t)t * num_heads + h) * head_dim;
  for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < TEAL_WARPS; w++) v += warp_acc[w][d] * weight[w];
    o[d] = v / l_all;
  }
}
