// Paged decode attention on CPU, in place over the block table: each (sequence, KV head) reads its keys and values
// once, straight from the pool blocks the table names (no gathered copy), for all the query heads that share that
// KV head (GQA). q fp32; the pools fp32 or fp16 (an fp16 KV cache halves the bytes this memory-bound loop reads:
// each fp16 block is widened into a 4 KB scratch with F16C first). kernels/paged_attention.py falls back to the
// gather path for other dtypes.
//
//   q (B, nh, hd), k_pool / v_pool (nkv, slots, hd), block_tables (B, nb) int64, seq_lens (B,) int64 -> (B, nh, hd)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

inline void widen(const at::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// The rows of one block as fp32: the pool itself when it is fp32, else widened into `buf`.
inline const float* block_rows(const float* block, int64_t, float*) { return block; }
inline const float* block_rows(const at::Half* block, int64_t n, float* buf) {
  widen(block, buf, n);
  return buf;
}

template <typename T>
void decode(const float* Q, const T* K, const T* V, const int64_t* BT, const int64_t* L, float* O, int64_t B,
            int64_t nh, int64_t hd, int64_t nkv, int64_t slots, int64_t nb, int64_t bs, float sc) {
  const int64_t rep = nh / nkv;
  at::parallel_for(0, B * nkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(rep * hd);
    std::vector<float> buf(bs * hd);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nkv, h = i % nkv, len = L[b];
      scores.resize(rep * len);
      const float* qb = Q + (b * nh + h * rep) * hd;  // the rep query heads of KV head h, one after another
      const T* Kh = K + h * slots * hd;
      const T* Vh = V + h * slots * hd;
      const int64_t* table = BT + b * nb;
      for (int64_t t0 = 0; t0 < len; t0 += bs) {
        const int64_t n = std::min(bs, len - t0);
        const float* kb = block_rows(Kh + table[t0 / bs] * bs * hd, n * hd, buf.data());
        int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
        if (hd % 8 == 0) {  // 4 keys at a time per query head: 4 independent FMA chains share each q load
          for (; t + 4 <= n; t += 4) {
            const float* k0 = kb + t * hd;
            for (int64_t r = 0; r < rep; ++r) {
              const float* qr = qb + r * hd;
              __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
              for (int64_t d = 0; d < hd; d += 8) {
                const __m256 qv = _mm256_loadu_ps(qr + d);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + hd + d), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * hd + d), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * hd + d), a3);
              }
              // horizontal sums of the four at once: (a0 a1 a2 a3) -> one 4-lane vector
              const __m256 h01 = _mm256_hadd_ps(a0, a1), h23 = _mm256_hadd_ps(a2, a3);
              const __m256 h = _mm256_hadd_ps(h01, h23);
              const __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
              _mm_storeu_ps(scores.data() + r * len + t0 + t, _mm_mul_ps(sum4, _mm_set1_ps(sc)));
            }
          }
        }
#endif
        for (; t < n; ++t) {
          const float* kr = kb + t * hd;
          for (int64_t r = 0; r < rep; ++r) {
            const float* qr = qb + r * hd;
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < hd; ++d) s += qr[d] * kr[d];
            scores[r * len + t0 + t] = s * sc;
          }
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
      for (int64_t t0 = 0; t0 < len; t0 += bs) {
        const int64_t n = std::min(bs, len - t0);
        const float* vb = block_rows(Vh + table[t0 / bs] * bs * hd, n * hd, buf.data());
#if defined(__AVX2__) && defined(__FMA__)
        if (hd % 8 == 0 && hd <= 128) {  // each query head's output row held in registers over the block
          for (int64_t r = 0; r < rep; ++r) {
            float* ar = acc.data() + r * hd;
            const float* pr = scores.data() + r * len + t0;
            __m256 o[16];
            const int64_t nv = hd / 8;
            for (int64_t j = 0; j < nv; ++j) o[j] = _mm256_loadu_ps(ar + 8 * j);
            for (int64_t t = 0; t < n; ++t) {
              const __m256 p = _mm256_set1_ps(pr[t]);
              const float* vr = vb + t * hd;
              for (int64_t j = 0; j < nv; ++j) o[j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * j), o[j]);
            }
            for (int64_t j = 0; j < nv; ++j) _mm256_storeu_ps(ar + 8 * j, o[j]);
          }
          continue;
        }
#endif
        for (int64_t t = 0; t < n; ++t) {
          const float* vr = vb + t * hd;
          for (int64_t r = 0; r < rep; ++r) {
            const float p = scores[r * len + t0 + t];
            float* ar = acc.data() + r * hd;
#pragma omp simd
            for (int64_t d = 0; d < hd; ++d) ar[d] += p * vr[d];
          }
        }
      }
      std::copy(acc.begin(), acc.end(), O + (b * nh + h * rep) * hd);
    }
  });
}

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                        const at::Tensor& block_tables, const at::Tensor& seq_lens, int64_t block_size,
                        double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat, "paged_decode: float32 queries only");
  TORCH_CHECK(k_pool.scalar_type() == v_pool.scalar_type() &&
                  (k_pool.scalar_type() == at::kFloat || k_pool.scalar_type() == at::kHalf),
              "paged_decode: float32 or float16 pools");
  TORCH_CHECK(q.is_contiguous() && k_pool.is_contiguous() && v_pool.is_contiguous() &&
                  block_tables.is_contiguous() && seq_lens.is_contiguous(), "paged_decode: contiguous inputs");
  const int64_t B = q.size(0), nh = q.size(1), hd = q.size(2);
  const int64_t nkv = k_pool.size(0), slots = k_pool.size(1), nb = block_tables.size(1);
  auto out = at::empty_like(q);
  const float sc = static_cast<float>(scale);
  if (k_pool.scalar_type() == at::kFloat)
    decode(q.data_ptr<float>(), k_pool.data_ptr<float>(), v_pool.data_ptr<float>(), block_tables.data_ptr<int64_t>(),
           seq_lens.data_ptr<int64_t>(), out.data_ptr<float>(), B, nh, hd, nkv, slots, nb, block_size, sc);
  else
    decode(q.data_ptr<float>(), k_pool.data_ptr<at::Half>(), v_pool.data_ptr<at::Half>(),
           block_tables.data_ptr<int64_t>(), seq_lens.data_ptr<int64_t>(), out.data_ptr<float>(), B, nh, hd, nkv,
           slots, nb, block_size, sc);
  return out;
}

}  // namespace

TORCH_LIBRARY(fullchain, m) {
  m.def("paged_decode(Tensor q, Tensor k_pool, Tensor v_pool, Tensor block_tables, Tensor seq_lens, "
        "int block_size, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(fullchain, CPU, m) { m.impl("paged_decode", &paged_decode); }
