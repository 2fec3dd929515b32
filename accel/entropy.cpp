// The entropy (in bits) and the top token of each row of scores: what entropy-based layer choice asks of every
// layer's early-exit logits at every decode step (generation/entropy.py).
//
// Why a hand-written kernel: with every layer recorded, a step takes the entropy and the argmax of 30 rows of
// 49152 scores. In PyTorch that is about six passes over 5.9 MB (max, subtract, exp, sum, product, argmax),
// each writing a new 5.9 MB temporary; freeing and allocating buffers that large makes the C library hand the
// memory back to the system and fault it in again every step (docs/performance.md has the figures). This
// loop reads each row twice and writes nothing but two numbers a row:
//
//   pass 1: m = max_x z(x) and the first x where z(x) = m (torch.argmax's choice);
//   pass 2: S = sum_x e^(z(x) - m) and T = sum_x e^(z(x) - m) (z(x) - m), so that with p = e^(z - m) / S
//           H = -sum_x p log2 p = log2 S - T / (S ln 2)   bits, as entropy_bits computes it.
//
// A score of -inf has p = 0 and adds nothing; a row with a NaN gets entropy NaN and the NaN's index (as argmax).
// scores (R, V) float32 contiguous -> (entropy (R,) float32, argmax (R,) int64). Needs AVX2 and FMA.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <limits>
#include <tuple>

namespace {

inline float max8(__m256 v) {
  __m128 half = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_max_ps(half, _mm_movehl_ps(half, half));
  half = _mm_max_ss(half, _mm_shuffle_ps(half, half, 1));
  return _mm_cvtss_f32(half);
}

inline float sum8(__m256 v) {
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_hadd_ps(half, half);
  half = _mm_hadd_ps(half, half);
  return _mm_cvtss_f32(half);
}

// e^x for x <= 0, eight lanes: e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln 2 / 2, e^r by the degree-7
// polynomial of Cephes' expf (relative error ~1e-7). Below -87 (where float32 runs out of normal numbers) x is
// clamped: e^-87 ~ 1.6e-38 counts as nothing next to the row's maximum, whose term is 1.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // x - n ln 2, ln 2 split in two parts
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));  // 1 + r + r^2 p(r)
  const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));  // times 2^n, built from its exponent bits
}

// Pass 1 for one row: its maximum and the first index holding it; a NaN anywhere wins (its first index).
std::pair<float, int64_t> row_max(const float* z, int64_t V) {
  const int64_t vectorized = V / 8 * 8;
  __m256 best = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 unordered = _mm256_setzero_ps();  // lanes that saw a NaN
  for (int64_t i = 0; i < vectorized; i += 8) {
    const __m256 v = _mm256_loadu_ps(z + i);
    best = _mm256_max_ps(best, v);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  float m = max8(best);
  bool has_nan = _mm256_movemask_ps(unordered) != 0;
  for (int64_t i = vectorized; i < V; ++i) {
    has_nan = has_nan || std::isnan(z[i]);
    m = z[i] > m ? z[i] : m;
  }
  for (int64_t i = 0; i < V; ++i) {  // the first position of the maximum (or of a NaN): usually not far
    if (has_nan ? std::isnan(z[i]) : z[i] == m) {
      return {has_nan ? z[i] : m, i};
    }
  }
  return {m, 0};  // every score is -inf: argmax is 0 (as torch's), the entropy NaN (as entropy_bits')
}

// Pass 2 for one row: log2 S - T / (S ln 2), the entropy in bits, with m the row's (finite) maximum.
float row_entropy_bits(const float* z, int64_t V, float m) {
  const int64_t vectorized = V / 16 * 16;  // two 8-lane accumulators of each sum; the rest one by one
  const __m256 max = _mm256_set1_ps(m), floor = _mm256_set1_ps(-87.0f);
  const __m256 minus_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, t0 = s0, t1 = s0;
  for (int64_t i = 0; i < vectorized; i += 16) {
    const __m256 z0 = _mm256_loadu_ps(z + i), z1 = _mm256_loadu_ps(z + i + 8);
    const __m256 d0 = _mm256_max_ps(_mm256_sub_ps(z0, max), floor);  // z - m in [-87, 0]
    const __m256 d1 = _mm256_max_ps(_mm256_sub_ps(z1, max), floor);
    // e^(z - m), and exactly 0 where z = -inf (a token the processors removed)
    const __m256 e0 = _mm256_and_ps(exp8(d0), _mm256_cmp_ps(z0, minus_inf, _CMP_NEQ_OQ));
    const __m256 e1 = _mm256_and_ps(exp8(d1), _mm256_cmp_ps(z1, minus_inf, _CMP_NEQ_OQ));
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
    t0 = _mm256_fmadd_ps(e0, d0, t0);
    t1 = _mm256_fmadd_ps(e1, d1, t1);
  }
  double S = sum8(_mm256_add_ps(s0, s1)), T = sum8(_mm256_add_ps(t0, t1));
  for (int64_t i = vectorized; i < V; ++i) {
    if (z[i] != -std::numeric_limits<float>::infinity()) {
      const double d = static_cast<double>(z[i]) - m;  // in double: z - m may pass -FLT_MAX
      S += std::exp(d);
      T += std::exp(d) * d;
    }
  }
  return static_cast<float>(std::log2(S) - T / S / M_LN2);
}

std::tuple<at::Tensor, at::Tensor> entropy_and_argmax(const at::Tensor& scores) {
  TORCH_CHECK(scores.dim() == 2 && scores.size(1) > 0, "entropy_and_argmax: scores (rows, vocab) expected, got ",
              scores.sizes());
  TORCH_CHECK(scores.device().is_cpu() && scores.scalar_type() == at::kFloat && scores.is_contiguous(),
              "entropy_and_argmax: a contiguous float32 CPU tensor expected");
  const int64_t R = scores.size(0), V = scores.size(1);
  at::Tensor entropy = at::empty({R}, scores.options());
  at::Tensor argmax = at::empty({R}, scores.options().dtype(at::kLong));
  const float* z = scores.const_data_ptr<float>();
  float* h = entropy.mutable_data_ptr<float>();
  int64_t* top = argmax.mutable_data_ptr<int64_t>();
  at::parallel_for(0, R, 1, [&](int64_t first, int64_t last) {  // rows are split among torch's threads
    for (int64_t r = first; r < last; ++r) {
      const auto [m, index] = row_max(z + r * V, V);
      top[r] = index;
      h[r] = std::isfinite(m) ? row_entropy_bits(z + r * V, V, m) : std::numeric_limits<float>::quiet_NaN();
    }
  });
  return {entropy, argmax};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(scratch_lm, m) { m.def("entropy_and_argmax(Tensor scores) -> (Tensor, Tensor)"); }

TORCH_LIBRARY_IMPL(scratch_lm, CPU, m) { m.impl("entropy_and_argmax", &entropy_and_argmax); }
