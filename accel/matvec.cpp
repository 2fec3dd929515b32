// y = W x for one input row: the product every weight matrix takes in a batch-1 decode step; and Y = X W^T for a
// few rows (beam search, small batches), each weight row read once for all of them (few_rows, below).
//
// Why a hand-written kernel (docs/performance.md has the measurements): a decode step reads every weight once,
// so its speed is the speed at which the weights stream from memory. PyTorch's matrix-vector products (MKL for
// float32, its own kernels for bfloat16/float16) stream a weight well below what memory delivers to a plain
// loop that reads one long array. This loop comes close to that by doing the simplest thing: each thread walks
// its share of W row by row, front to back, so that memory sees a few long sequential reads, and asks for the
// bytes a little ahead of use (_mm_prefetch) so that the next cache lines are on their way while the current
// ones are multiplied.
//
// W (out, in) row-major in float32, bfloat16 or float16, or int8 with a scale per row (accel/quantize.py:
// y[o] = scale[o] * sum_i q[o, i] x[i]); x (in,) or (rows, in) in any float dtype. Products and sums are in
// float32 (as PyTorch's own CPU kernels do for bf16/fp16); y (out,) or (rows, out) is returned in x's dtype.
// Needs AVX2, FMA and F16C (accel/matvec.py checks the CPU before building).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>

namespace {

// Eight consecutive weights as eight float32 lanes.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

inline __m256 load8(const at::Half* p) {  // F16C converts eight halves in one instruction
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m256 load8(const at::BFloat16* p) {  // a bfloat16 is the top 16 bits of a float32: widen, shift
  __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

inline __m256 load8(const int8_t* p) {  // widen eight int8 to int32, then convert
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

inline float sum8(__m256 v) {
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_hadd_ps(half, half);
  half = _mm_hadd_ps(half, half);
  return _mm_cvtss_f32(half);
}

// The best of 0, 256, 512, 1024 and 2048 bytes ahead on the machine it was tuned on (docs/performance.md).
constexpr int64_t kPrefetchBytes = 1024;

template <typename T>
void matvec_rows(const T* weight, const float* x, float* y, int64_t in, int64_t first, int64_t last) {
  const int64_t vectorized = in / 32 * 32;  // four 8-lane accumulators per step; the rest one by one
  for (int64_t r = first; r < last; ++r) {
    const T* row = weight + r * in;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t i = 0; i < vectorized; i += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(row + i) + kPrefetchBytes, _MM_HINT_T0);
      acc0 = _mm256_fmadd_ps(load8(row + i), _mm256_loadu_ps(x + i), acc0);
      acc1 = _mm256_fmadd_ps(load8(row + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
      acc2 = _mm256_fmadd_ps(load8(row + i + 16), _mm256_loadu_ps(x + i + 16), acc2);
      acc3 = _mm256_fmadd_ps(load8(row + i + 24), _mm256_loadu_ps(x + i + 24), acc3);
    }
    float total = sum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (int64_t i = vectorized; i < in; ++i) {
      total += static_cast<float>(row[i]) * x[i];
    }
    y[r] = total;
  }
}

// A few input rows (beam search, a small batch, DoLa's early-exit head): each weight row comes from memory once
// and is multiplied by every row of x while it sits in L1, so R rows cost little more than one (BLAS
// takes nearly twice the time of one for 4 rows). R <= 4 here: 2R accumulators (two per row, so the FMAs of one row do
// not wait on each other) and two weight vectors fit AVX2's 16 registers; more rows go in groups of four.
template <typename T, int R>
inline void dot_rows(const T* row, const float* x, int64_t in, float* y, int64_t y_stride, bool prefetch) {
  const int64_t vectorized = in / 16 * 16;
  __m256 acc0[R], acc1[R];
  for (int j = 0; j < R; ++j) {
    acc0[j] = _mm256_setzero_ps();
    acc1[j] = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < vectorized; i += 16) {
    if (prefetch) {
      _mm_prefetch(reinterpret_cast<const char*>(row + i) + kPrefetchBytes, _MM_HINT_T0);
    }
    const __m256 w0 = load8(row + i), w1 = load8(row + i + 8);
    for (int j = 0; j < R; ++j) {
      acc0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + j * in + i), acc0[j]);
      acc1[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + j * in + i + 8), acc1[j]);
    }
  }
  for (int j = 0; j < R; ++j) {
    float total = sum8(_mm256_add_ps(acc0[j], acc1[j]));
    for (int64_t i = vectorized; i < in; ++i) {
      total += static_cast<float>(row[i]) * x[j * in + i];
    }
    y[j * y_stride] = total;
  }
}

// y (R, out) = x (R, in) @ W^T for R >= 2: rows of W in [first, last).
template <typename T>
void few_rows(const T* weight, const float* x, float* y, int64_t R, int64_t in, int64_t out, int64_t first,
              int64_t last) {
  for (int64_t r = first; r < last; ++r) {
    const T* row = weight + r * in;
    for (int64_t j = 0; j < R; j += 4) {  // the first group prefetches; the others find the row in L1
      const float* xj = x + j * in;
      float* yj = y + j * out + r;
      switch (std::min<int64_t>(R - j, 4)) {
        case 1: dot_rows<T, 1>(row, xj, in, yj, out, j == 0); break;
        case 2: dot_rows<T, 2>(row, xj, in, yj, out, j == 0); break;
        case 3: dot_rows<T, 3>(row, xj, in, yj, out, j == 0); break;
        default: dot_rows<T, 4>(row, xj, in, yj, out, j == 0); break;
      }
    }
  }
}

at::Tensor matvec(const at::Tensor& weight, const at::Tensor& x, const std::optional<at::Tensor>& scale) {
  TORCH_CHECK(weight.dim() == 2 && (x.dim() == 1 || x.dim() == 2) && weight.size(1) == x.size(-1),
              "matvec: weight (out, in) and x (in,) or (rows, in) expected, got ", weight.sizes(), " and ",
              x.sizes());
  TORCH_CHECK(weight.device().is_cpu() && x.device().is_cpu(), "matvec: CPU tensors only");
  TORCH_CHECK(weight.is_contiguous(), "matvec: the weight must be row-major and contiguous");
  const auto dtype = weight.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kChar,
              "matvec: float32, bfloat16, float16 or int8 weights only, got ", dtype);
  TORCH_CHECK((dtype == at::kChar) == scale.has_value(), "matvec: int8 weights need a scale per row, others none");
  if (scale.has_value()) {
    TORCH_CHECK(scale->dim() == 1 && scale->size(0) == weight.size(0), "matvec: scale must be (out,)");
  }
  const at::Tensor x32 = x.to(at::kFloat).contiguous();
  const int64_t rows = x.dim() == 2 ? x.size(0) : 1, in = weight.size(1), out = weight.size(0);
  if (rows == 0) {
    return at::empty({0, out}, x.options());  // nothing to multiply (the one-row loop below would write y)
  }
  at::Tensor y = at::empty(x.dim() == 2 ? at::IntArrayRef{rows, out} : at::IntArrayRef{out}, x32.options());
  const float* xp = x32.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  // Rows of W are split among torch's threads (torch.set_num_threads), at least 16 rows per piece.
  at::parallel_for(0, out, 16, [&](int64_t first, int64_t last) {
    if (rows > 1) {
      if (dtype == at::kFloat) {
        few_rows(weight.const_data_ptr<float>(), xp, yp, rows, in, out, first, last);
      } else if (dtype == at::kBFloat16) {
        few_rows(weight.const_data_ptr<at::BFloat16>(), xp, yp, rows, in, out, first, last);
      } else if (dtype == at::kHalf) {
        few_rows(weight.const_data_ptr<at::Half>(), xp, yp, rows, in, out, first, last);
      } else {
        few_rows(weight.const_data_ptr<int8_t>(), xp, yp, rows, in, out, first, last);
      }
    } else if (dtype == at::kFloat) {
      matvec_rows(weight.const_data_ptr<float>(), xp, yp, in, first, last);
    } else if (dtype == at::kBFloat16) {
      matvec_rows(weight.const_data_ptr<at::BFloat16>(), xp, yp, in, first, last);
    } else if (dtype == at::kHalf) {
      matvec_rows(weight.const_data_ptr<at::Half>(), xp, yp, in, first, last);
    } else {
      matvec_rows(weight.const_data_ptr<int8_t>(), xp, yp, in, first, last);
    }
  });
  if (scale.has_value()) {
    y.mul_(scale->to(at::kFloat));  // in float32, before the one rounding to x's dtype (per column of y)
  }
  return y.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY(scratch_lm, m) { m.def("matvec(Tensor weight, Tensor x, Tensor? scale=None) -> Tensor"); }

TORCH_LIBRARY_IMPL(scratch_lm, CPU, m) { m.impl("matvec", &matvec); }
