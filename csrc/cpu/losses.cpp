// The lesson's other losses on CPU: mse_loss, binary_cross_entropy(_with_logits), hinge_loss and
// multi_margin_loss, forward and backward. The elementwise ones share one driver
// (loss_common.h): operands in the input's layout, losses reduced on the fly (no per-element
// buffer unless reduction='none').
#include "dim_layout.h"
#include "loss_common.h"
#include "../elementwise_losses.h"
#include "../kernel_lists.h"

namespace pyops::cpu {
namespace {

template <typename scalar_t>
Operands<scalar_t> operands(const Elementwise& e) {
  Operands<scalar_t> ops;
  const auto bind = [&](Operand slot, const at::Tensor& t) {
    ops.ptr[slot] = t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
    ops.fill[slot] = 1;
  };
  bind(kX, e.x);
  bind(kY, e.y);
  bind(kW, e.w);
  bind(kPosW, e.pos_w);
  bind(kGrad, at::Tensor());
  return ops;
}

// The kernels of the elementwise losses' host code (elementwise_losses.h): the drivers, and a
// functor per loss called with the operands' vectors (v[kX], v[kY], ...).
struct ElementwiseKernels {
  // The loss over every element, reduced; `denominator` divides the sum for 'mean'.
  template <typename LossFn>
  static at::Tensor forward(const Elementwise& e, int64_t reduction, const at::Tensor& denominator,
                            const LossFn& loss_fn) {
    check_reduction(reduction);
    const int64_t n = e.x.numel();
    at::Tensor result;
    PYOPS_DISPATCH_FLOATING(e.x.scalar_type(), e.op, [&] {
      const auto ops = operands<scalar_t>(e);
      if (reduction == kNone) {
        result = output_like(e.x);
        elementwise_store(ops, result.mutable_data_ptr<scalar_t>(), n, loss_fn);
        return;
      }
      const double total = elementwise_sum(ops, n, loss_fn);
      result = reduced_total(cpu_scalar(total), e, reduction, denominator);
    });
    return result;
  }

  // The input gradient, grad_fn(values) per element, values[kGrad] holding the upstream gradient
  // of that element (already divided by `denominator` for 'mean').
  template <typename GradFn>
  static at::Tensor backward(const at::Tensor& grad, const Elementwise& e, int64_t reduction,
                             const at::Tensor& denominator, const GradFn& grad_fn) {
    const auto g = elementwise_upstream(grad, e, reduction, denominator);
    auto result = output_like(e.x);
    PYOPS_DISPATCH_FLOATING(e.x.scalar_type(), e.op, [&] {
      auto ops = operands<scalar_t>(e);
      if (reduction == kNone) {
        ops.ptr[kGrad] = g.const_data_ptr<scalar_t>();
      } else {
        ops.fill[kGrad] = *g.const_data_ptr<acc_t<scalar_t>>();
      }
      elementwise_store(ops, result.mutable_data_ptr<scalar_t>(), e.x.numel(), grad_fn);
    });
    return result;
  }

  static void check_probabilities(const Elementwise& e) {
    PYOPS_DISPATCH_FLOATING(e.x.scalar_type(), e.op, [&] {
      const double outside = elementwise_sum(operands<scalar_t>(e), e.x.numel(), [](const auto& v) {
        using V = std::decay_t<decltype(v[kX])>;
        return V::blendv(V(1), V(0), (v[kX] >= V(0)) & (v[kX] <= V(1)));
      });
      TORCH_CHECK(outside == 0, "all elements of input should be between 0 and 1");
    });
  }

  // mse_loss: w * (x - y)^2; 'mean' divides by sum(w) when weighted, as torch.
  struct MseLoss {
    template <typename Vs>
    auto operator()(const Vs& v) const {
      const auto d = v[kX] - v[kY];
      return d * d * v[kW];
    }
  };
  struct MseGrad {  // the upstream scale first, as torch's (2 / N) * (x - y) * grad: no overflow
    template <typename Vs>
    auto operator()(const Vs& v) const {
      using V = std::decay_t<decltype(v[kX])>;
      return v[kGrad] * V(2) * (v[kX] - v[kY]) * v[kW];
    }
  };

  // binary_cross_entropy_with_logits: w * ((1 - y) x - lw * log_sigmoid(x)), lw = 1 +
  // (pos_weight - 1) y; its x-derivative is w * (lw * sigmoid(x) - pos_weight * y).
  // log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)) is finite for every finite x.
  struct BceLogitsLoss {
    template <typename Vs>
    auto operator()(const Vs& v) const {
      using V = std::decay_t<decltype(v[kX])>;
      const V lw = (v[kPosW] - V(1)) * v[kY] + V(1);
      const V log_sigmoid = at::vec::minimum(v[kX], V(0)) - exp_of(v[kX].abs().neg()).log1p();
      return ((V(1) - v[kY]) * v[kX] - lw * log_sigmoid) * v[kW];
    }
  };
  struct BceLogitsGrad {
    template <typename Vs>
    auto operator()(const Vs& v) const {
      using V = std::decay_t<decltype(v[kX])>;
      const V lw = (v[kPosW] - V(1)) * v[kY] + V(1);
      const V sigmoid = (V(1) + exp_of(v[kX].neg())).reciprocal();
      return (lw * sigmoid - v[kPosW] * v[kY]) * v[kW] * v[kGrad];
    }
  };

  // binary_cross_entropy on probabilities: -w * (y * max(log x, -100) + (1 - y) *
  // max(log(1 - x), -100)), as torch clamps the logs; x-derivative
  // w * (x - y) / max(x (1 - x), 1e-12).
  struct BceLoss {
    template <typename Vs>
    auto operator()(const Vs& v) const {
      using V = std::decay_t<decltype(v[kX])>;
      const V log_x = at::vec::maximum(v[kX].log(), V(-100));
      const V log_1mx = at::vec::maximum(v[kX].neg().log1p(), V(-100));
      return ((v[kY] - V(1)) * log_1mx - v[kY] * log_x) * v[kW];
    }
  };
  struct BceGrad {
    template <typename Vs>
    auto operator()(const Vs& v) const {
      using V = std::decay_t<decltype(v[kX])>;
      // torch clamps with the float constant 1e-12f, also for double inputs.
      const V denom = at::vec::maximum((V(1) - v[kX]) * v[kX], V(1e-12f));
      return v[kGrad] * v[kW] * (v[kX] - v[kY]) / denom;
    }
  };

  // hinge_loss: max(0, margin - y * x), the lesson's binary hinge; its subgradient that of
  // torch.clamp(margin - y * x, min=0): -y where margin - y * x >= 0.
  struct HingeLoss {
    double margin;
    template <typename Vs>
    auto operator()(const Vs& v) const {
      using V = std::decay_t<decltype(v[kX])>;
      return at::vec::maximum(V(margin) - v[kY] * v[kX], V(0));
    }
  };
  struct HingeGrad {
    double margin;
    template <typename Vs>
    auto operator()(const Vs& v) const {
      using V = std::decay_t<decltype(v[kX])>;
      const V active = (V(margin) - v[kY] * v[kX]) >= V(0);
      return V::blendv(V(0), (v[kY] * v[kGrad]).neg(), active);
    }
  };
};

// ---- multi_margin_loss ----------------------------------------------------------------------
// Row loss: w_t / C * sum over j != t of h(margin - x_t + x_j)^p, h(z) = z for z > 0, else 0
// (NaN included, as torch).

// Calls fn(row, x (classes values in T), t, w_t) for every row, in parallel; half rows are
// widened into a per-thread buffer.
template <typename scalar_t, typename Fn>
void for_each_margin_row(const MarginRows& m, const Fn& fn) {
  using T = acc_t<scalar_t>;
  const scalar_t* xp = m.x.const_data_ptr<scalar_t>();
  const int64_t* tp = m.target.const_data_ptr<int64_t>();
  const T* wp = m.weight.defined() ? m.weight.const_data_ptr<T>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / m.classes);
  parallel_for(0, m.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> widened;
    for (int64_t r = begin; r < end; ++r) {
      const T* x;
      if constexpr (std::is_same_v<T, scalar_t>) {
        x = xp + r * m.classes;
      } else {
        widened.resize(m.classes);
        at::vec::convert(xp + r * m.classes, widened.data(), m.classes);
        x = widened.data();
      }
      const int64_t t = checked_margin_target(tp[r], m.classes);
      fn(r, x, t, wp ? wp[t] : T(1));
    }
  });
}

// Sum over j != skip of fn(x_j).
template <typename T, typename MapFn>
T row_sum_excluding(const MapFn& fn, const T* x, int64_t n, int64_t skip) {
  return row_map_sum<T>(fn, skip, x) + row_map_sum<T>(fn, n - skip - 1, x + skip + 1);
}

template <typename V>
V positive_part(const V& z) {
  return V::blendv(V(0), z, z > V(0));
}

// The kernels of multi_margin_loss's host code (loss_inputs.h).
struct MarginKernels {
  template <typename scalar_t>
  static void margin_losses(const MarginRows& m, int64_t p, double margin, at::Tensor& losses) {
    using T = acc_t<scalar_t>;
    using V = Vectorized<T>;
    T* lp = losses.mutable_data_ptr<T>();
    for_each_margin_row<scalar_t>(m, [&](int64_t r, const T* x, int64_t t, T w_t) {
      const V shift(static_cast<T>(margin) - x[t]), weight(w_t);
      // Weighted term by term and divided at the end, as torch: the same overflow behaviour.
      const auto term = [&](V v) {
        const V h = positive_part(shift + v);
        return (p == 1 ? h : h * h) * weight;
      };
      lp[r] = row_sum_excluding(term, x, m.classes, t) / m.classes;
    });
  }

  template <typename scalar_t>
  static void margin_gradient(const MarginRows& m, int64_t p, double margin,
                              const at::Tensor& scale, at::Tensor& result) {
    using T = acc_t<scalar_t>;
    using V = Vectorized<T>;
    const GradScale<T> s(scale);
    scalar_t* rp = result.mutable_data_ptr<scalar_t>();
    for_each_margin_row<scalar_t>(m, [&](int64_t r, const T* x, int64_t t, T w_t) {
      thread_local std::vector<T> row;
      row.resize(m.classes);
      const V shift(static_cast<T>(margin) - x[t]);
      const V coef(s[r] * w_t / m.classes * (p == 1 ? T(1) : T(2)));
      vec_map([&](V v) {
        const V z = shift + v;
        return V::blendv(V(0), p == 1 ? coef : coef * z, z > V(0));
      }, row.data(), m.classes, x);
      row[t] = -row_sum_excluding([](V v) { return v; }, row.data(), m.classes, t);
      at::vec::convert(row.data(), rp + r * m.classes, m.classes);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) { PYOPS_LOSS_KERNELS(m); }

}  // namespace pyops::cpu
