// teal's attention kernels over the paged KV pool (CUDA forms of the custom ops in src/models/paged_attention.rs,
// whose CPU implementations are the reference these are tested against: tests/cuda_kernels.rs).
//
// Pool layout (both keys and values, always f32): [slots, kv_heads, head_dim], slot = block * block_size + offset.
// A ragged batch: token t belongs to sequence token_seq[t] at absolute position token_pos[t]; block_tables is
// [sequences, max_blocks] (row-major, each row padded), listing the pool blocks that hold a sequence's positions.
// A token sees positions first..=last of its sequence: last = token_pos[t], first = 0, or last + 1 - window for
// local (sliding-window) layers (window = 0: no window).
//
// Two attention paths, chosen per token by the host (src/ops/paged_attention/cuda.rs):
// - decode tokens (alone in their sequence this step): teal_attention_split, flash-decoding style. The token's
//   positions are cut into `splits` chunks, one thread block each, so one long sequence fills the GPU; each block
//   leaves an unnormalised partial (running max m, sum l, weighted V) that teal_attention_merge combines. With one
//   split the block writes the output itself.
// - prefill runs (up to TEAL_TILE_Q consecutive tokens of one sequence): teal_attention_prefill, one block per
//   (head, run), which stages TEAL_TILE_K key/value rows at a time in shared memory for all of the run's queries,
//   so each row is read from the pool once per run instead of once per query.

#include <math.h>
#include <stdint.h>

#define TEAL_WARPS 4
#define TEAL_MAX_HEAD_DIM 256
#define TEAL_PER_LANE (TEAL_MAX_HEAD_DIM / 32)
#define TEAL_TILE_Q 16  // queries per prefill run (the host's PREFILL_RUN)
#define TEAL_Q_PER_WARP (TEAL_TILE_Q / TEAL_WARPS)
#define TEAL_TILE_K 16  // key/value rows staged in shared memory at a time (2 x 16 KiB at head_dim 256)

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

__device__ __forceinline__ uint32_t first_visible(uint32_t last, uint32_t window) {
  return (window != 0 && last + 1 > window) ? last + 1 - window : 0;
}

__device__ __forceinline__ uint64_t row_offset(const uint32_t *table, uint32_t p, uint32_t block_size,
                                               uint32_t num_kv_heads, uint32_t kvh, uint32_t head_dim) {
  const uint64_t slot = (uint64_t)table[p / block_size] * block_size + p % block_size;
  return (slot * num_kv_heads + kvh) * head_dim;
}

// The online-softmax state of one query in one warp: running max m, running sum l, and the weighted sum of V
// (head_dim / 32 values per lane). update() folds in one position's score and value row.
struct Online {
  float m, l, acc[TEAL_PER_LANE];
  __device__ void init() {
    m = -INFINITY;
    l = 0.0f;
#pragma unroll
    for (int i = 0; i < TEAL_PER_LANE; i++) acc[i] = 0.0f;
  }
  __device__ void update(float s, const float *v, uint32_t lane, uint32_t head_dim) {
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float w = expf(s - m_new);
    l = l * correction + w;
#pragma unroll
    for (int i = 0; i < TEAL_PER_LANE; i++) {
      const uint32_t d = lane + 32 * i;
      if (d < head_dim) acc[i] = acc[i] * correction + w * v[d];
    }
    m = m_new;
  }
};

__device__ __forceinline__ float dot_lanes(const float *qr, const float *k, uint32_t lane, uint32_t head_dim) {
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < TEAL_PER_LANE; i++) {
    const uint32_t d = lane + 32 * i;
    if (d < head_dim) s += qr[i] * k[d];
  }
  return warp_sum(s);
}

// Grid: (heads, items, splits); block: TEAL_WARPS warps. Item i is token items[i]; split z covers positions
// first + z * chunk .. min(first + (z + 1) * chunk, last + 1). Each warp walks every TEAL_WARPS-th position of
// the split; the warps merge through shared memory. splits == 1: out[t, h] is written, normalised. Else the
// partial goes to part_acc[(i, h, z), :] (relative to its max) and part_ml[(i, h, z)] = (m, l).
extern "C" __global__ void teal_attention_split(float *out, float *part_acc, float *part_ml, const float *q,
                                                const float *k_pool, const float *v_pool, const uint32_t *items,
                                                const uint32_t *token_seq, const uint32_t *token_pos,
                                                const uint32_t *block_tables, uint32_t max_blocks,
                                                uint32_t block_size, uint32_t num_heads, uint32_t num_kv_heads,
                                                uint32_t head_dim, float scale, uint32_t window, uint32_t chunk) {
  const uint32_t h = blockIdx.x;
  const uint32_t item = blockIdx.y;
  const uint32_t z = blockIdx.z;
  const uint32_t splits = gridDim.z;
  const uint32_t warp = threadIdx.x / 32;
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t t = items[item];
  const uint32_t kvh = h / (num_heads / num_kv_heads);
  const uint32_t *table = block_tables + (uint64_t)token_seq[t] * max_blocks;
  const uint32_t last = token_pos[t];
  const uint32_t begin = first_visible(last, window) + z * chunk;
  const uint32_t end = min(begin + chunk, last + 1);  // begin >= end: this split has no position
  const float *qv = q + ((uint64_t)t * num_heads + h) * head_dim;

  float qr[TEAL_PER_LANE];
#pragma unroll
  for (int i = 0; i < TEAL_PER_LANE; i++) {
    const uint32_t d = lane + 32 * i;
    qr[i] = d < head_dim ? qv[d] : 0.0f;
  }
  Online st;
  st.init();
  for (uint32_t p = begin + warp; p < end; p += TEAL_WARPS) {
    const uint64_t off = row_offset(table, p, block_size, num_kv_heads, kvh, head_dim);
    st.update(dot_lanes(qr, k_pool + off, lane, head_dim) * scale, v_pool + off, lane, head_dim);
  }

  __shared__ float warp_m[TEAL_WARPS];
  __shared__ float warp_l[TEAL_WARPS];
  __shared__ float warp_acc[TEAL_WARPS][TEAL_MAX_HEAD_DIM];
  if (lane == 0) {
    warp_m[warp] = st.m;
    warp_l[warp] = st.l;
  }
#pragma unroll
  for (int i = 0; i < TEAL_PER_LANE; i++) {
    const uint32_t d = lane + 32 * i;
    if (d < head_dim) warp_acc[warp][d] = st.acc[i];
  }
  __syncthreads();
  // Warps that saw no position have l = 0 and weigh nothing.
  float m_all = -INFINITY;
  for (int w = 0; w < TEAL_WARPS; w++) m_all = fmaxf(m_all, warp_m[w]);
  float weight[TEAL_WARPS];
  float l_all = 0.0f;
  for (int w = 0; w < TEAL_WARPS; w++) {
    weight[w] = warp_l[w] > 0.0f ? expf(warp_m[w] - m_all) : 0.0f;
    l_all += warp_l[w] * weight[w];
  }
  const uint64_t part = ((uint64_t)item * num_heads + h) * splits + z;
  if (splits > 1 && threadIdx.x == 0) {
    part_ml[2 * part] = m_all;
    part_ml[2 * part + 1] = l_all;
  }
  float *o = splits > 1 ? part_acc + part * head_dim : out + ((uint64_t)t * num_heads + h) * head_dim;
  const float norm = splits > 1 ? 1.0f : 1.0f / l_all;  // one split always sees its token's own position
  for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < TEAL_WARPS; w++) v += warp_acc[w][d] * weight[w];
    o[d] = v * norm;
  }
}

// Grid: (heads, items); block: any width. out[items[i], h] = the splits' partials of (i, h) merged: each is
// weighted by exp(m_z - max m) (an empty split, l = 0, by nothing) and the sum divided by the merged l.
extern "C" __global__ void teal_attention_merge(float *out, const float *part_acc, const float *part_ml,
                                                const uint32_t *items, uint32_t num_heads, uint32_t head_dim,
                                                uint32_t splits) {
  const uint32_t h = blockIdx.x;
  const uint32_t item = blockIdx.y;
  const uint64_t base = ((uint64_t)item * num_heads + h) * splits;
  float m_all = -INFINITY;
  for (uint32_t z = 0; z < splits; z++) {
    if (part_ml[2 * (base + z) + 1] > 0.0f) m_all = fmaxf(m_all, part_ml[2 * (base + z)]);
  }
  float l_all = 0.0f;
  for (uint32_t z = 0; z < splits; z++) {
    const float l = part_ml[2 * (base + z) + 1];
    if (l > 0.0f) l_all += l * expf(part_ml[2 * (base + z)] - m_all);
  }
  float *o = out + ((uint64_t)items[item] * num_heads + h) * head_dim;
  for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.0f;
    for (uint32_t z = 0; z < splits; z++) {
      const float l = part_ml[2 * (base + z) + 1];
      if (l > 0.0f) v += part_acc[(base + z) * head_dim + d] * expf(part_ml[2 * (base + z)] - m_all);
    }
    o[d] = v / l_all;
  }
}

// Grid: (heads, runs); block: TEAL_WARPS warps. Run r is tokens runs[2r] .. runs[2r] + runs[2r+1] (at most
// TEAL_TILE_Q, one sequence, consecutive positions). Warp w owns the run's queries w, w + TEAL_WARPS, ...; the
// block stages TEAL_TILE_K key and value rows at a time in shared memory and every warp scores its queries
// against them (causal and window limits per query).
extern "C" __global__ void teal_attention_prefill(float *out, const float *q, const float *k_pool,
                                                  const float *v_pool, const uint32_t *runs,
                                                  const uint32_t *token_seq, const uint32_t *token_pos,
                                                  const uint32_t *block_tables, uint32_t max_blocks,
                                                  uint32_t block_size, uint32_t num_heads, uint32_t num_kv_heads,
                                                  uint32_t head_dim, float scale, uint32_t window) {
  const uint32_t h = blockIdx.x;
  const uint32_t start = runs[2 * blockIdx.y];
  const uint32_t len = runs[2 * blockIdx.y + 1];
  const uint32_t warp = threadIdx.x / 32;
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t kvh = h / (num_heads / num_kv_heads);
  const uint32_t *table = block_tables + (uint64_t)token_seq[start] * max_blocks;
  const uint32_t lo = first_visible(token_pos[start], window);
  const uint32_t hi = token_pos[start + len - 1];  // the run's last query sees up to here

  float qr[TEAL_Q_PER_WARP][TEAL_PER_LANE];
  Online st[TEAL_Q_PER_WARP];
#pragma unroll
  for (int j = 0; j < TEAL_Q_PER_WARP; j++) {
    const uint32_t qi = warp + TEAL_WARPS * j;
    const float *qv = q + ((uint64_t)(start + min(qi, len - 1)) * num_heads + h) * head_dim;
#pragma unroll
    for (int i = 0; i < TEAL_PER_LANE; i++) {
      const uint32_t d = lane + 32 * i;
      qr[j][i] = d < head_dim ? qv[d] : 0.0f;
    }
    st[j].init();
  }

  __shared__ float ks[TEAL_TILE_K][TEAL_MAX_HEAD_DIM];
  __shared__ float vs[TEAL_TILE_K][TEAL_MAX_HEAD_DIM];
  for (uint32_t p0 = lo; p0 <= hi; p0 += TEAL_TILE_K) {
    const uint32_t rows = min(TEAL_TILE_K, hi + 1 - p0);
    __syncthreads();  // the previous tile is no longer read
    for (uint32_t x = threadIdx.x; x < rows * head_dim; x += blockDim.x) {
      const uint32_t r = x / head_dim, d = x % head_dim;
      const uint64_t off = row_offset(table, p0 + r, block_size, num_kv_heads, kvh, head_dim);
      ks[r][d] = k_pool[off + d];
      vs[r][d] = v_pool[off + d];
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < TEAL_Q_PER_WARP; j++) {
      const uint32_t qi = warp + TEAL_WARPS * j;
      if (qi >= len) continue;  // uniform across the warp
      const uint32_t at = token_pos[start + qi];
      const uint32_t from = first_visible(at, window);
      for (uint32_t r = 0; r < rows; r++) {
        const uint32_t p = p0 + r;
        if (p < from || p > at) continue;  // uniform across the warp
        st[j].update(dot_lanes(qr[j], ks[r], lane, head_dim) * scale, vs[r], lane, head_dim);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < TEAL_Q_PER_WARP; j++) {
    const uint32_t qi = warp + TEAL_WARPS * j;
    if (qi >= len) continue;
    float *o = out + ((uint64_t)(start + qi) * num_heads + h) * head_dim;
#pragma unroll
    for (int i = 0; i < TEAL_PER_LANE; i++) {
      const uint32_t d = lane + 32 * i;
      if (d < head_dim) o[d] = st[j].acc[i] / st[j].l;
    }
  }
}
