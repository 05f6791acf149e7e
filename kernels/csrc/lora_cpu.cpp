// Many LoRA adapters over one projection's output on CPU, in one call: for each run of rows [s, e) that share an
// adapter i,
//
//     u = x[s:e] A_i^T;   y[s:e, slice j] += u[:, j r:(j+1) r] B_i[slice j]^T;   then, for DoRA, y[s:e] *= g_i
//
// A fused projection (q|k|v, gate|up) has k output slices, each with its own r rows of A_i (stacked: (k r, in)) and
// its own B rows (B_i compact: (out, r), slice j's rows multiply only its own r columns of u): a block-diagonal
// (out, k r) B would spend (k - 1) r multiply-adds per output on zeros, a third of all LoRA work on SmolLM2.
//
// The runs are cut into tiles of at most `tile` rows, and the tiles are spread over the threads, each tile's two
// small matmuls single-threaded inside its task. From Python the same work is 2 matmuls per adapter per projection,
// each a fork/join of the whole thread team on a 16 x 576 x 48 problem; at 64 decode rows over 4 adapters that cost
// 47 ms a step over the base's 233 (SmolLM2-135M, 2 threads). Any dtype the matmuls take (fp32, bf16).
//
//   y (N, out) in place, x (N, in), bounds [s0, e0, s1, e1, ...], a[i] (k r_i, in), b[i] (out, r_i), g[i] (out,)
//   or empty, slices: the k output sizes (summing to out)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

void lora_apply(at::Tensor y, const at::Tensor& x, at::IntArrayRef bounds, at::TensorList a, at::TensorList b,
                at::TensorList g, at::IntArrayRef slices, int64_t tile) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && y.size(0) == x.size(0), "lora_apply: y (N, out) and x (N, in)");
  TORCH_CHECK(bounds.size() == 2 * a.size() && a.size() == b.size() && b.size() == g.size(),
              "lora_apply: one (start, end) and one A, B, g per run");
  TORCH_CHECK(tile >= 1, "lora_apply: tile >= 1");
  int64_t total = 0;
  for (int64_t n : slices) total += n;
  TORCH_CHECK(total == y.size(1), "lora_apply: the slices must sum to y's columns");
  struct Task {
    int64_t run, start, rows;
  };
  std::vector<Task> tasks;
  for (size_t i = 0; i < a.size(); ++i) {
    const int64_t s = bounds[2 * i], e = bounds[2 * i + 1];
    TORCH_CHECK(0 <= s && s <= e && e <= y.size(0), "lora_apply: run outside the rows");
    for (int64_t r = s; r < e; r += tile) tasks.push_back({static_cast<int64_t>(i), r, std::min(tile, e - r)});
  }
  const at::ThreadLocalState state;  // inference mode, grad mode: the OpenMP threads run the ops as the caller would
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t t = begin; t < end; ++t) {
      const Task& k = tasks[t];
      auto ys = y.narrow(0, k.start, k.rows);  // rows of one adapter: a contiguous view, updated in place
      const auto u = at::mm(x.narrow(0, k.start, k.rows), a[k.run].t());  // (rows, k r)
      const at::Tensor& bi = b[k.run];
      const int64_t r = bi.size(1);
      int64_t off = 0;
      for (size_t j = 0; j < slices.size(); ++j) {  // a column block of y: strided rows, the matmul writes in place
        ys.narrow(1, off, slices[j]).addmm_(u.narrow(1, j * r, r), bi.narrow(0, off, slices[j]).t());
        off += slices[j];
      }
      if (g[k.run].numel()) ys.mul_(g[k.run]);
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fullchain, m) {
  m.def("lora_apply(Tensor(a!) y, Tensor x, int[] bounds, Tensor[] a, Tensor[] b, Tensor[] g, int[] slices, int tile) -> ()");
}

TORCH_LIBRARY_IMPL(fullchain, CPU, m) { m.impl("lora_apply", &lora_apply); }
