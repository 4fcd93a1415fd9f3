// Fused differentiable sorting network on CPU.
//
// Each row keeps its soft permutation as a wire-major tile T[wire][item] (the transpose of P[item][rank]) so that a
// comparator is a mix of two contiguous columns. The forward walks all layers in that tile and stores nothing for
// backward; the backward recomputes the layer states of a row into per-thread scratch and walks the layers in
// reverse. Each column is only touched on the item range where it can be non-zero (P starts as the identity), which
// halves the work of the bitonic network and does not change a single bit of the result.
//
// Arithmetic follows diffsort 0.2.0 operation by operation (compile with -ffp-contract=off: no fused multiply-adds)
// so that P and the sorted values are bitwise identical wherever the elementwise math functions agree.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

enum Distribution : int64_t { CAUCHY = 0, LOGISTIC = 1, LOGISTIC_PHI = 2, GAUSSIAN = 3, RECIPROCAL = 4, OPTIMAL = 5 };

// torch computes atan and erf of contiguous float tensors with MKL's vector math (high-accuracy mode) when it is
// built with MKL; calling the same routines keeps alpha, and so P, bitwise identical to diffsort. The symbols are
// weak: without MKL they are null and the C library functions run instead.
extern "C" {
void vmsAtan(int n, const float* a, float* r, long long mode) __attribute__((weak));
void vmdAtan(int n, const double* a, double* r, long long mode) __attribute__((weak));
void vmsErf(int n, const float* a, float* r, long long mode) __attribute__((weak));
void vmdErf(int n, const double* a, double* r, long long mode) __attribute__((weak));
}
constexpr long long kVmlMode = 0x00000002LL | 0x00140000LL | 0x00000100LL;  // VML_HA | VML_FTZDAZ_OFF | ERRMODE_IGNORE

inline void vec_atan(int n, const float* in, float* out) {
  if (vmsAtan != nullptr) return vmsAtan(n, in, out, kVmlMode);
  for (int i = 0; i < n; ++i) out[i] = std::atan(in[i]);
}
inline void vec_atan(int n, const double* in, double* out) {
  if (vmdAtan != nullptr) return vmdAtan(n, in, out, kVmlMode);
  for (int i = 0; i < n; ++i) out[i] = std::atan(in[i]);
}
inline void vec_erf(int n, const float* in, float* out) {
  if (vmsErf != nullptr) return vmsErf(n, in, out, kVmlMode);
  for (int i = 0; i < n; ++i) out[i] = std::erf(in[i]);
}
inline void vec_erf(int n, const double* in, double* out) {
  if (vmdErf != nullptr) return vmdErf(n, in, out, kVmlMode);
  for (int i = 0; i < n; ++i) out[i] = std::erf(in[i]);
}

bool has_mkl_vml() { return vmsAtan != nullptr && vmdAtan != nullptr && vmsErf != nullptr && vmdErf != nullptr; }

template <typename T>
struct Relax {
  int64_t kind;
  T s;        // steepness in the compute dtype, as torch casts the Python float
  T sigma;    // 1 / steepness (gaussian)
  double lam; // art_lambda (logistic_phi)

  static T sigmoid(T u) { return T(1) / (T(1) + std::exp(-u)); }

  // alpha[c] = f(d[c]) for the k comparators of a layer; `tmp` has room for k values.
  void alphas(const T* d, T* alpha, int k, T* tmp) const {
    switch (kind) {
      case CAUCHY:
        for (int c = 0; c < k; ++c) tmp[c] = s * d[c];
        vec_atan(k, tmp, alpha);
        for (int c = 0; c < k; ++c) alpha[c] = T(1.0 / M_PI) * alpha[c] + T(0.5);
        return;
      case GAUSSIAN:
        for (int c = 0; c < k; ++c) {
          T z = d[c] / sigma;
          tmp[c] = z / T(1.4142135623730951);
        }
        vec_erf(k, tmp, alpha);
        for (int c = 0; c < k; ++c) alpha[c] = T(0.5) + T(0.5) * alpha[c];
        return;
      default:
        for (int c = 0; c < k; ++c) alpha[c] = scalar_alpha(d[c]);
    }
  }

  T scalar_alpha(T d) const {
    switch (kind) {
      case CAUCHY:
        return T(1.0 / M_PI) * std::atan(s * d) + T(0.5);
      case LOGISTIC:
        return sigmoid(d * s);
      case LOGISTIC_PHI:
        return sigmoid(d * s / std::pow(std::abs(d) + T(1e-10), T(lam)));
      case GAUSSIAN: {
        T z = d / sigma;
        z = z / T(1.4142135623730951);
        return T(0.5) + T(0.5) * std::erf(z);
      }
      case RECIPROCAL: {
        T v = s * d;
        return T(0.5) * (v / (T(2) + std::abs(v)) + T(1));
      }
      default: {  // OPTIMAL
        T v = s * d;
        T tails = T(v > T(0.25)) - T(v < T(-0.25));
        T clamped = std::min(std::max(v, T(-0.25)), T(0.25));
        return clamped + T(0.5) + tails * (T(0.25) - (T(1) / (std::abs(v) + T(1e-10))) * T(0.0625));
      }
    }
  }

  // d alpha / d d, where d = b - a.
  T dalpha(T d) const {
    switch (kind) {
      case CAUCHY: {
        T v = s * d;
        return T(1.0 / M_PI) * s / (T(1) + v * v);
      }
      case LOGISTIC: {
        T g = sigmoid(d * s);
        return g * (T(1) - g) * s;
      }
      case LOGISTIC_PHI: {
        T ad = std::abs(d) + T(1e-10);
        T q = std::pow(ad, T(lam));
        T u = d * s / q;
        T sign = T(d > T(0)) - T(d < T(0));
        T du = s / q - d * s / (q * q) * T(lam) * std::pow(ad, T(lam - 1.0)) * sign;
        T g = sigmoid(u);
        return g * (T(1) - g) * du;
      }
      case GAUSSIAN: {
        T z = d / sigma;
        return std::exp(T(-0.5) * z * z) / (sigma * T(2.5066282746310002));
      }
      case RECIPROCAL: {
        T den = T(2) + std::abs(s * d);
        return s / (den * den);
      }
      default: {  // OPTIMAL
        T v = s * d;
        T av = std::abs(v);
        if (av <= T(0.25)) return s;
        T den = av + T(1e-10);
        return s * T(0.0625) / (den * den);
      }
    }
  }
};

struct Network {
  const int32_t* comps;    // (K, 4): a, b, lo, hi
  const int32_t* offsets;  // (L + 1)
  int64_t layers;
  int64_t num_comps;
};

// Item range [first, last) where each wire's column can be non-zero; P starts as the identity.
struct Ranges {
  std::vector<int32_t> first, last;
  explicit Ranges(int64_t n) : first(n), last(n) { reset(); }
  void reset() {
    for (int32_t w = 0; w < (int32_t)first.size(); ++w) {
      first[w] = w;
      last[w] = w + 1;
    }
  }
  // Returns the union of the ranges of wires a and b, and stores it for both.
  std::pair<int32_t, int32_t> merge(int32_t a, int32_t b) {
    int32_t f = std::min(first[a], first[b]);
    int32_t l = std::max(last[a], last[b]);
    first[a] = first[b] = f;
    last[a] = last[b] = l;
    return {f, l};
  }
};

template <typename T>
inline void mix_columns(T* __restrict__ ca, T* __restrict__ cb, T alpha, T beta, int32_t f, int32_t l, bool lo_is_a) {
  // lo_is_a: the minimum goes to column a (ascending comparator); otherwise the columns swap roles.
  if (lo_is_a) {
    for (int32_t i = f; i < l; ++i) {
      T pa = ca[i], pb = cb[i];
      T t1 = alpha * pa;
      T t2 = beta * pb;
      T t3 = beta * pa;
      T t4 = alpha * pb;
      ca[i] = t1 + t2;
      cb[i] = t3 + t4;
    }
  } else {
    for (int32_t i = f; i < l; ++i) {
      T pa = ca[i], pb = cb[i];
      T t1 = alpha * pa;
      T t2 = beta * pb;
      T t3 = beta * pa;
      T t4 = alpha * pb;
      cb[i] = t1 + t2;
      ca[i] = t3 + t4;
    }
  }
}

// Runs all layers of one row in place: xs (n) values, tile (n x ld) wire-major. If `states` is given, the tile and
// values before each layer are stored there (for the backward), and the alphas in `alphas`.
template <typename T>
void forward_row(const Network& net, const Relax<T>& relax, int64_t n, int64_t ld, T* xs, T* tile, Ranges& ranges,
                 T* states, T* xstates, T* alphas, T* scratch) {
  // scratch: 2 * max comparators per layer
  ranges.reset();
  for (int64_t w = 0; w < n; ++w) {
    T* col = tile + w * ld;
    for (int64_t i = 0; i < n; ++i) col[i] = T(0);
    col[w] = T(1);
  }
  for (int64_t layer = 0; layer < net.layers; ++layer) {
    if (states != nullptr) std::copy(tile, tile + n * ld, states + layer * n * ld);
    if (xstates != nullptr) std::copy(xs, xs + n, xstates + layer * n);
    const int32_t c0 = net.offsets[layer], c1 = net.offsets[layer + 1];
    const int k = c1 - c0;
    if (k == 0) continue;
    T* diff = scratch;
    T* tmp = scratch + k;
    for (int c = 0; c < k; ++c) {
      const int32_t* cp = net.comps + 4 * (c0 + c);
      diff[c] = xs[cp[1]] - xs[cp[0]];
    }
    T* alpha_layer = alphas + c0;
    relax.alphas(diff, alpha_layer, k, tmp);
    for (int c = 0; c < k; ++c) {
      const int32_t* cp = net.comps + 4 * (c0 + c);
      int32_t a = cp[0], b = cp[1], lo = cp[2];
      T va = xs[a], vb = xs[b];
      T alpha = alpha_layer[c];
      T beta = T(1) - alpha;
      T x_lo = alpha * va + beta * vb;
      T x_hi = beta * va + alpha * vb;
      bool lo_is_a = lo == a;
      xs[lo_is_a ? a : b] = x_lo;
      xs[lo_is_a ? b : a] = x_hi;
      if (tile != nullptr) {
        auto [f, l] = ranges.merge(a, b);
        mix_columns(tile + a * ld, tile + b * ld, alpha, beta, f, l, lo_is_a);
      }
    }
  }
}

int64_t max_layer_width(const Network& net) {
  int64_t width = 1;
  for (int64_t layer = 0; layer < net.layers; ++layer)
    width = std::max<int64_t>(width, net.offsets[layer + 1] - net.offsets[layer]);
  return width;
}

Network make_network(const at::Tensor& comps, const at::Tensor& offsets) {
  TORCH_CHECK(comps.scalar_type() == at::kInt && comps.is_contiguous() && comps.dim() == 2 && comps.size(1) == 4,
              "comparators must be a contiguous (K, 4) int32 tensor");
  TORCH_CHECK(offsets.scalar_type() == at::kInt && offsets.is_contiguous(), "offsets must be contiguous int32");
  return Network{comps.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(), offsets.numel() - 1, comps.size(0)};
}

template <typename T>
Relax<T> make_relax(int64_t kind, double steepness, double art_lambda) {
  return Relax<T>{kind, T(steepness), T(1.0 / steepness), art_lambda};
}

std::tuple<at::Tensor, at::Tensor> sort_forward(const at::Tensor& x_in, const at::Tensor& comps,
                                                const at::Tensor& offsets, double steepness, int64_t kind,
                                                double art_lambda) {
  TORCH_CHECK(x_in.dim() == 2, "x must be (B, n)");
  at::Tensor x = x_in.contiguous();
  const int64_t batch = x.size(0), n = x.size(1);
  Network net = make_network(comps, offsets);
  at::Tensor values = at::empty({batch, n}, x.options());
  at::Tensor perm = at::empty({batch, n, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "neco_sort_forward", [&] {
    using T = scalar_t;
    Relax<T> relax = make_relax<T>(kind, steepness, art_lambda);
    const T* xp = x.data_ptr<T>();
    T* vp = values.data_ptr<T>();
    T* pp = perm.data_ptr<T>();
    at::parallel_for(0, batch, 16, [&](int64_t begin, int64_t end) {
      std::vector<T> tile(n * n), alphas(std::max<int64_t>(net.num_comps, 1)), scratch(2 * max_layer_width(net));
      Ranges ranges(n);
      for (int64_t row = begin; row < end; ++row) {
        T* xs = vp + row * n;
        std::copy(xp + row * n, xp + (row + 1) * n, xs);
        forward_row<T>(net, relax, n, n, xs, tile.data(), ranges, nullptr, nullptr, alphas.data(), scratch.data());
        T* out = pp + row * n * n;  // P[item][rank] = tile[rank][item]
        for (int64_t i = 0; i < n; ++i)
          for (int64_t w = 0; w < n; ++w) out[i * n + w] = tile[w * n + i];
      }
    });
  });
  return {values, perm};
}

at::Tensor sort_backward(const at::Tensor& x_in, const at::Tensor& grad_values_in, const at::Tensor& grad_perm_in,
                         const at::Tensor& comps, const at::Tensor& offsets, double steepness, int64_t kind,
                         double art_lambda, bool has_grad_values, bool has_grad_perm) {
  at::Tensor x = x_in.contiguous();
  const int64_t batch = x.size(0), n = x.size(1);
  Network net = make_network(comps, offsets);
  at::Tensor grad_x = at::empty({batch, n}, x.options());
  at::Tensor gv = has_grad_values ? grad_values_in.contiguous() : grad_values_in;
  at::Tensor gp = has_grad_perm ? grad_perm_in.contiguous() : grad_perm_in;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "neco_sort_backward", [&] {
    using T = scalar_t;
    Relax<T> relax = make_relax<T>(kind, steepness, art_lambda);
    const T* xp = x.data_ptr<T>();
    const T* gvp = has_grad_values ? gv.data_ptr<T>() : nullptr;
    const T* gpp = has_grad_perm ? gp.data_ptr<T>() : nullptr;
    T* gxp = grad_x.data_ptr<T>();
    const int64_t layers = net.layers;
    at::parallel_for(0, batch, 8, [&](int64_t begin, int64_t end) {
      std::vector<T> tile(n * n), states(std::max<int64_t>(layers, 1) * n * n), xstates(std::max<int64_t>(layers, 1) * n);
      std::vector<T> alphas(std::max<int64_t>(net.num_comps, 1)), xs(n), grad_tile(n * n);
      std::vector<T> scratch(2 * max_layer_width(net));
      Ranges ranges(n);
      for (int64_t row = begin; row < end; ++row) {
        std::copy(xp + row * n, xp + (row + 1) * n, xs.begin());
        const bool with_tile = has_grad_perm;
        // Without a gradient for P only the values path is recomputed and walked back.
        forward_row<T>(net, relax, n, n, xs.data(), with_tile ? tile.data() : nullptr, ranges,
                       with_tile ? states.data() : nullptr, xstates.data(), alphas.data(), scratch.data());
        T* gx = gxp + row * n;
        for (int64_t w = 0; w < n; ++w) gx[w] = gvp ? gvp[row * n + w] : T(0);
        if (with_tile) {
          const T* g = gpp + row * n * n;  // grad P[item][rank] -> grad_tile[rank][item]
          for (int64_t i = 0; i < n; ++i)
            for (int64_t w = 0; w < n; ++w) grad_tile[w * n + i] = g[i * n + w];
        }
        for (int64_t layer = layers - 1; layer >= 0; --layer) {
          const T* xs_l = xstates.data() + layer * n;
          const T* st = with_tile ? states.data() + layer * n * n : nullptr;
          for (int32_t c = net.offsets[layer]; c < net.offsets[layer + 1]; ++c) {
            const int32_t* cp = net.comps + 4 * c;
            int32_t a = cp[0], b = cp[1], lo = cp[2];
            bool lo_is_a = lo == a;
            int32_t hi = lo_is_a ? b : a;
            T alpha = alphas[c];
            T beta = T(1) - alpha;
            T va = xs_l[a], vb = xs_l[b];
            T g_lo = gx[lo], g_hi = gx[hi];
            T galpha = (va - vb) * (g_lo - g_hi);
            if (with_tile) {
              const T* sa = st + a * n;
              const T* sb = st + b * n;
              T* glo = grad_tile.data() + lo * n;
              T* ghi = grad_tile.data() + hi * n;
              T acc = T(0);
              for (int64_t i = 0; i < n; ++i) {
                T gl = glo[i], gh = ghi[i];
                acc += (sa[i] - sb[i]) * (gl - gh);
                // grad of column a and b from the grads of the lo / hi outputs
                T new_a = alpha * gl + beta * gh;
                T new_b = beta * gl + alpha * gh;
                glo[i] = lo_is_a ? new_a : new_b;
                ghi[i] = lo_is_a ? new_b : new_a;
              }
              galpha += acc;
            }
            T gd = galpha * relax.dalpha(vb - va);
            T ga = alpha * g_lo + beta * g_hi - gd;
            T gb = beta * g_lo + alpha * g_hi + gd;
            gx[a] = ga;
            gx[b] = gb;
          }
        }
      }
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY(neco_sort, m) {
  m.def("forward(Tensor x, Tensor comps, Tensor offsets, float steepness, int kind, float art_lambda) -> (Tensor, Tensor)");
  m.def("has_mkl_vml() -> bool", &has_mkl_vml);
  m.def(
      "backward(Tensor x, Tensor grad_values, Tensor grad_perm, Tensor comps, Tensor offsets, float steepness, int kind, "
      "float art_lambda, bool has_grad_values, bool has_grad_perm) -> Tensor");
}

TORCH_LIBRARY_IMPL(neco_sort, CPU, m) {
  m.impl("forward", &sort_forward);
  m.impl("backward", &sort_backward);
}
