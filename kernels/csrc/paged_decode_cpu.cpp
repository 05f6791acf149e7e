// Paged decode attention on CPU, in place over the block table: each (sequence, KV head) reads its keys and values
// once, straight from the pool blocks the table names (no gathered copy), for all the query heads that share that
// KV head (GQA). fp32 only; kernels/paged_attention.py falls back to the gather path for other dtypes.
//
//   q (B, nh, hd), k_pool / v_pool (nkv, slots, hd), block_tables (B, nb) int64, seq_lens (B,) int64 -> (B, nh, hd)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                        const at::Tensor& block_tables, const at::Tensor& seq_lens, int64_t block_size,
                        double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_pool.scalar_type() == at::kFloat &&
                  v_pool.scalar_type() == at::kFloat, "paged_decode: float32 tensors only");
  TORCH_CHECK(q.is_contiguous() && k_pool.is_contiguous() && v_pool.is_contiguous() &&
                  block_tables.is_contiguous() && seq_lens.is_contiguous(), "paged_decode: contiguous inputs");
  const int64_t B = q.size(0), nh = q.size(1), hd = q.size(2);
  const int64_t nkv = k_pool.size(0), slots = k_pool.size(1), nb = block_tables.size(1);
  const int64_t rep = nh / nkv;
  auto out = at::empty_like(q);
  const float* Q = q.data_ptr<float>();
  const float* K = k_pool.data_ptr<float>();
  const float* V = v_pool.data_ptr<float>();
  const int64_t* BT = block_tables.data_ptr<int64_t>();
  const int64_t* L = seq_lens.data_ptr<int64_t>();
  float* O = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);

  at::parallel_for(0, B * nkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(rep * hd);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nkv, h = i % nkv, len = L[b];
      scores.resize(rep * len);
      const float* qb = Q + (b * nh + h * rep) * hd;  // the rep query heads of KV head h, one after another
      const float* Kh = K + h * slots * hd;
      const float* Vh = V + h * slots * hd;
      const int64_t* table = BT + b * nb;
      for (int64_t t = 0; t < len; ++t) {
        const float* kr = Kh + (table[t / block_size] * block_size + t % block_size) * hd;
        for (int64_t r = 0; r < rep; ++r) {
          const float* qr = qb + r * hd;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < hd; ++d) s += qr[d] * kr[d];
          scores[r * len + t] = s * sc;
        }
      }
      for (int64_t r = 0; r < rep; ++r) {
        float* sr = scores.data() + r * len;
        float m = -INFINITY;
        for (int64_t t = 0; t < len; ++t) m = std::max(m, sr[t]);
        float sum = 0.f;
        for (int64_t t = 0; t < len; ++t) {
          sr[t] = std::exp(sr[t] - m);
          sum += sr[t];
        }
        const float inv = 1.f / sum;
        for (int64_t t = 0; t < len; ++t) sr[t] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const float* vr = Vh + (table[t / block_size] * block_size + t % block_size) * hd;
        for (int64_t r = 0; r < rep; ++r) {
          const float p = scores[r * len + t];
          float* ar = acc.data() + r * hd;
#pragma omp simd
          for (int64_t d = 0; d < hd; ++d) ar[d] += p * vr[d];
        }
      }
      float* ob = O + (b * nh + h * rep) * hd;
      std::copy(acc.begin(), acc.end(), ob);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(fullchain, m) {
  m.def("paged_decode(Tensor q, Tensor k_pool, Tensor v_pool, Tensor block_tables, Tensor seq_lens, "
        "int block_size, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(fullchain, CPU, m) { m.impl("paged_decode", &paged_decode); }
