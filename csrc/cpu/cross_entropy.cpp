// cross_entropy (log-softmax and NLL fused, class-index or probability targets), nll_loss, and
// their backward ops on CPU.
//
// The class dim is reduced as in softmax (dim_layout.h): contiguous rows, or column tiles when
// it is not innermost, e.g. (N, C, d1, ...). The forward reads the logits once per row and keeps
// only the per-position log-sum-exp; the backward writes each gradient element once:
//   grad_c = s * (softmax_c * A - smoothing / C * w_c) - s * (1 - smoothing) * w_t [c == t]
// with A = (1 - smoothing) * w_t + smoothing / C * sum(w), and for probability targets q
//   grad_c = s * (softmax_c * sum(w * q') - w_c * q'_c),  q' = (1 - smoothing) * q + smoothing / C.
// z-loss (lse_square_scale z) adds z * lse^2 to a position's loss and 2 z lse to A (or sum(w q'));
// with a softcap c the logits are c * tanh(x / c), staged per row or tile, and the gradient
// with respect to them is multiplied by 1 - (x' / c)^2.
#include "dim_layout.h"
#include "loss_common.h"
#include "../kernel_lists.h"

namespace pyops::cpu {
namespace {

// The loss' arguments in the accumulation dtype T, shared by every position.
template <typename T>
struct LossArgs {
  int64_t classes;
  int64_t ignore_index;
  T smoothing;
  const T* weight;  // classes entries, or nullptr for all ones
  T weight_sum;
  T z;    // lse_square_scale
  T cap;  // softcap, 0 for none

  T w(int64_t c) const { return weight ? weight[c] : T(1); }
  // A position's loss with its z-loss term.
  T with_z(T loss, T lse) const { return z != T(0) ? loss + z * lse * lse : loss; }
  // A (or sum(w q')) of the gradient with z-loss's share.
  T with_z_share(T a, T lse) const { return z != T(0) ? a + T(2) * z * lse : a; }
};

template <typename T>
LossArgs<T> loss_args(const Prepared& p, const ClassOptions& o) {
  const int64_t classes = p.shape.dim;
  const T* w = p.weight.defined() ? p.weight.const_data_ptr<T>() : nullptr;
  return {classes, o.ignore_index, static_cast<T>(o.label_smoothing), w,
          w ? row_sum(w, classes) : static_cast<T>(classes), static_cast<T>(o.lse_square_scale),
          static_cast<T>(o.softcap)};
}

// The options of a loss with class targets and nothing else (nll_loss, the 'mean' denominator).
ClassOptions plain(int64_t ignore_index) { return {ignore_index, 0.0, 0.0, 0.0}; }

// x = cap * tanh(x / cap) over n staged values.
template <typename T>
void soft_cap(T* x, int64_t n, T cap) {
  using V = Vectorized<T>;
  const V c(cap);
  row_map([c](V v) { return c * tanh_of(v / c); }, x, n, x);
}

// The gradient g with respect to capped logits x made one with respect to the logits.
template <typename T>
void through_soft_cap(T* g, const T* x, int64_t n, T cap) {
  using V = Vectorized<T>;
  const V c(cap), one(1);
  row_map([c, one](V gv, V v) {
    const V t = v / c;
    return gv * ((one - t) * (one + t));
  }, g, n, g, x);
}

// Per-position results of the forward. For class targets the loss is w_t * nll, and with label
// smoothing `smooth` gets sum_c w_c (lse - x_c): torch reduces the two apart and then mixes them
// as (1 - eps) * nll + eps / C * smooth, which decides where overflow turns into NaN.
template <typename T>
struct ForwardOut {
  T* loss;
  T* smooth;  // nullptr unless ClassOptions::split_smoothing
  T* lse;
};

// A class target's loss: torch's split (nll here, the smoothing term apart) where `smooth` is
// given; else one number, with the smoothing term mixed in and z-loss added.
template <typename T>
void store_class_loss(const LossArgs<T>& a, const ForwardOut<T>& out, int64_t p, T nll,
                      T smooth_term, T lse) {
  if (out.smooth) {
    out.loss[p] = nll;
    out.smooth[p] = smooth_term;
  } else if (a.smoothing != T(0)) {
    out.loss[p] = a.with_z((T(1) - a.smoothing) * nll + a.smoothing / a.classes * smooth_term, lse);
  } else {
    out.loss[p] = a.with_z(nll, lse);
  }
}

// Sum of the weights of the non-ignored targets: the 'mean' denominator of class-index losses.
template <typename T>
at::Tensor target_weight_sum(const at::Tensor& target, const LossArgs<T>& a) {
  const int64_t* t = target.const_data_ptr<int64_t>();
  double total = 0;
  for (int64_t p = 0; p < target.numel(); ++p) {
    if (t[p] != a.ignore_index) total += a.w(checked_target(t[p], a.classes));
  }
  return cpu_scalar(total);
}

// ---- cross_entropy forward ------------------------------------------------------------------

// Rows are read as they are stored (S; half types widened as they are loaded), computed in T.
template <typename S, typename T>
void ce_forward_row(const S* x, const S* q, int64_t p, int64_t target, const LossArgs<T>& a,
                    const ForwardOut<T>& out) {
  using V = Vectorized<T>;
  const int64_t C = a.classes;
  const T max = row_max(x, C);
  const V vmax(max);
  const T log_sum = std::log(row_map_sum<T>([&](V v) { return exp_of(v - vmax); }, C, x));
  out.lse[p] = max + log_sum;  // also for ignored rows: the backward needs to know if it is NaN
  if (!q && target == a.ignore_index) {
    out.loss[p] = 0;
    if (out.smooth) out.smooth[p] = 0;
    return;
  }
  if (q) {  // sum_c w_c q'_c (max - x_c + log_sum), q' = (1 - eps) q + eps / C
    const V keep(T(1) - a.smoothing), spread(a.smoothing / C);
    T wq_sum, wq_gap;
    if (a.weight) {
      wq_sum = row_map_sum<T>([&](V w, V qv) { return w * (qv * keep + spread); }, C, a.weight, q);
      wq_gap = row_map_sum<T>([&](V w, V qv, V v) { return w * (qv * keep + spread) * (vmax - v); },
                              C, a.weight, q, x);
    } else {
      wq_sum = row_map_sum<T>([&](V qv) { return qv * keep + spread; }, C, q);
      wq_gap = row_map_sum<T>([&](V qv, V v) { return (qv * keep + spread) * (vmax - v); },
                              C, q, x);
    }
    out.loss[p] = a.with_z(wq_gap + wq_sum * log_sum, out.lse[p]);
    return;
  }
  const int64_t t = checked_target(target, C);
  T smooth_term = 0;
  if (a.smoothing != T(0)) {  // sum_c w_c (max - x_c + log_sum)
    const T gap = a.weight
                      ? row_map_sum<T>([&](V w, V v) { return w * (vmax - v); }, C, a.weight, x)
                      : row_map_sum<T>([&](V v) { return vmax - v; }, C, x);
    smooth_term = gap + a.weight_sum * log_sum;
  }
  store_class_loss(a, out, p, a.w(t) * ((max - static_cast<T>(x[t])) + log_sum), smooth_term,
                   out.lse[p]);
}

// The same for a tile: `width` positions p0.. side by side, class c of position j at
// x[c * stride + j].
template <typename T>
void ce_forward_tile(const T* x, const T* q, int64_t stride, int64_t width, int64_t p0,
                     const int64_t* targets, const LossArgs<T>& a, const ForwardOut<T>& out) {
  using V = Vectorized<T>;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  const int64_t C = a.classes;
  const T keep = T(1) - a.smoothing, eps_c = a.smoothing / C;
  V max[kVecs], sum[kVecs], gap[kVecs], wq[kVecs];
  for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
    max[k] = load(x + j, n);
    sum[k] = gap[k] = wq[k] = V(0);
  });
  for (int64_t c = 1; c < C; ++c) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
      max[k] = at::vec::maximum(max[k], load(x + c * stride + j, n));
    });
  }
  const bool need_gap = q || a.smoothing != T(0);
  for_each_row_block(C, sum, width, [&](int64_t c, V* partial) {
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
      partial[k] = partial[k] + exp_of(load(x + c * stride + j, n) - max[k]);
    });
  });
  if (need_gap) {
    for_each_row_block(C, gap, width, [&](int64_t c, V* partial) {
      const V w(a.w(c));
      for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
        V coef = w;
        if (q) coef = coef * (load(q + c * stride + j, n) * V(keep) + V(eps_c));
        partial[k] = partial[k] + coef * (max[k] - load(x + c * stride + j, n));
      });
    });
  }
  if (q) {
    for_each_row_block(C, wq, width, [&](int64_t c, V* partial) {
      const V w(a.w(c));
      for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
        partial[k] = partial[k] + w * (load(q + c * stride + j, n) * V(keep) + V(eps_c));
      });
    });
  }
  T col_max[tile_width<T>()], col_log_sum[tile_width<T>()], col_gap[tile_width<T>()],
      col_wq[tile_width<T>()];
  for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
    max[k].store(col_max + j, n);
    sum[k].log().store(col_log_sum + j, n);
    gap[k].store(col_gap + j, n);
    wq[k].store(col_wq + j, n);
  });
  for (int64_t j = 0; j < width; ++j) {
    const int64_t p = p0 + j;
    const T lse = col_max[j] + col_log_sum[j];
    out.lse[p] = lse;
    if (q) {
      out.loss[p] = a.with_z(col_gap[j] + col_wq[j] * col_log_sum[j], lse);
      continue;
    }
    if (targets[p] == a.ignore_index) {
      out.loss[p] = 0;
      if (out.smooth) out.smooth[p] = 0;
      continue;
    }
    const int64_t t = checked_target(targets[p], C);
    store_class_loss(a, out, p, a.w(t) * ((col_max[j] - x[t * stride + j]) + col_log_sum[j]),
                     col_gap[j] + a.weight_sum * col_log_sum[j], lse);
  }
}

// ---- cross_entropy backward -----------------------------------------------------------------

// An ignored position's gradient is 0 * softmax: zero, or NaN where the row's log-sum-exp is
// NaN (a NaN or +inf logit, or all -inf), which torch propagates too.
template <typename T>
T ignored_gradient(T lse) {
  return std::isnan(lse) ? std::numeric_limits<T>::quiet_NaN() : T(0);
}

template <typename S, typename T>
void ce_backward_row(const S* x, const S* q, S* gi, int64_t target, T scale, T lse,
                     const LossArgs<T>& a) {
  using V = Vectorized<T>;
  const int64_t C = a.classes;
  if (!q && target == a.ignore_index) {
    std::fill(gi, gi + C, ignored_gradient(lse));
    return;
  }
  const T keep = T(1) - a.smoothing, eps_c = a.smoothing / C;
  const V vs(scale), vlse(lse), vkeep(keep), veps(eps_c);
  if (q) {
    const T wq_sum = a.weight
        ? row_map_sum<T>([&](V w, V qv) { return w * (qv * vkeep + veps); }, C, a.weight, q)
        : row_map_sum<T>([&](V qv) { return qv * vkeep + veps; }, C, q);
    const V vq(a.with_z_share(wq_sum, lse));
    if (a.weight) {
      row_map([=](V w, V qv, V v) {
        return vs * (exp_of(v - vlse) * vq - w * (qv * vkeep + veps));
      }, gi, C, a.weight, q, x);
    } else {
      row_map([=](V qv, V v) { return vs * (exp_of(v - vlse) * vq - (qv * vkeep + veps)); }, gi, C,
              q, x);
    }
    return;
  }
  const int64_t t = checked_target(target, C);
  const V va(a.with_z_share(keep * a.w(t) + eps_c * a.weight_sum, lse));
  const auto weighted = [=](V w, V v) { return vs * (exp_of(v - vlse) * va - veps * w); };
  const auto plain = [=](V v) { return vs * (exp_of(v - vlse) * va - veps); };
  const T xt = static_cast<T>(x[t]);  // before gi, which may be x itself, is written
  if (a.weight) {
    row_map(weighted, gi, C, a.weight, x);
  } else {
    row_map(plain, gi, C, x);
  }
  const T target_share = scale * keep * a.w(t);
  if constexpr (std::is_same_v<S, T>) {
    gi[t] -= target_share;
  } else {  // rounded once: the target's element again in T, less its share
    const V v(xt);
    T g;
    (a.weight ? weighted(V(a.weight[t]), v) : plain(v)).store(&g, 1);
    gi[t] = static_cast<S>(g - target_share);
  }
}

template <typename T>
void ce_backward_tile(const T* x, const T* q, T* gi, int64_t stride, int64_t width, int64_t p0,
                      const int64_t* targets, const GradScale<T>& scale, const T* lse,
                      const LossArgs<T>& a) {
  using V = Vectorized<T>;
  constexpr int64_t kVecs = tile_width<T>() / V::size() + 1;
  const int64_t C = a.classes;
  const T keep = T(1) - a.smoothing, eps_c = a.smoothing / C;
  // Per column: the scale s, its log-sum-exp, and A (class targets) or sum(w q') (soft).
  T col_s[tile_width<T>()], col_lse[tile_width<T>()], col_a[tile_width<T>()];
  for (int64_t j = 0; j < width; ++j) {
    const int64_t p = p0 + j;
    const bool ignored = !q && targets[p] == a.ignore_index;
    col_s[j] = ignored ? T(0) : scale[p];
    col_lse[j] = lse[p];
    col_a[j] = (q || ignored) ? T(0)
        : a.with_z_share(keep * a.w(checked_target(targets[p], C)) + eps_c * a.weight_sum, lse[p]);
  }
  V vs[kVecs], vlse[kVecs], va[kVecs];
  for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
    vs[k] = load(col_s + j, n);
    vlse[k] = load(col_lse + j, n);
    va[k] = load(col_a + j, n);
  });
  if (q) {
    for_each_row_block(C, va, width, [&](int64_t c, V* partial) {
      const V w(a.w(c));
      for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
        partial[k] = partial[k] + w * (load(q + c * stride + j, n) * V(keep) + V(eps_c));
      });
    });
    if (a.z != T(0)) {
      for_each_column_vec<T>(width, [&](int64_t, int64_t k, int64_t) {
        va[k] = va[k] + V(T(2) * a.z) * vlse[k];
      });
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const V w(a.w(c));
    for_each_column_vec<T>(width, [&](int64_t j, int64_t k, int64_t n) {
      const T* xc = x + c * stride + j;
      const V minus = q ? w * (load(q + c * stride + j, n) * V(keep) + V(eps_c)) : w * V(eps_c);
      (vs[k] * (exp_of(load(xc, n) - vlse[k]) * va[k] - minus)).store(gi + c * stride + j, n);
    });
  }
  if (q) return;
  for (int64_t j = 0; j < width; ++j) {
    const int64_t p = p0 + j;
    if (targets[p] == a.ignore_index) {
      const T fill = ignored_gradient(lse[p]);
      for (int64_t c = 0; c < C; ++c) gi[c * stride + j] = fill;
    } else {
      gi[targets[p] * stride + j] -= col_s[j] * keep * a.w(targets[p]);
    }
  }
}

// ---- the forward, and with it the gradient --------------------------------------------------

// A piece's logits as the kernels read them: capped in a copy with a softcap (every operand is
// then staged, so that they share one stride).
template <typename scalar_t, typename T>
const T* staged_logits(Stage<scalar_t>& stage, const scalar_t* x, const Piece& piece,
                       const LossArgs<T>& a) {
  stage.copy = Stage<scalar_t>::kConvert || a.cap != T(0);
  if (a.cap == T(0)) return stage.in(0, x, piece);
  T* capped = stage.copied(0, x, piece);
  soft_cap(capped, piece.rows * piece.width, a.cap);
  return capped;
}

// The forward over every position, the loss in `loss_dtype`. With `grad` (rows, laid out as the
// prepared input) each row's gradient for an upstream gradient of one is also written, while the
// row is still in cache.
std::tuple<at::Tensor, at::Tensor> ce_forward(const Prepared& prep, int64_t reduction,
                                              const ClassOptions& options, at::Tensor* grad,
                                              at::ScalarType loss_dtype) {
  const at::Tensor& input = prep.input;
  const auto acc = acc_dtype(input.scalar_type());
  const auto& s = prep.shape;
  const int64_t positions = s.outer * s.inner;
  auto losses = new_output({positions}, input.options().dtype(acc));
  const bool split = options.split_smoothing(prep.soft);
  auto smooth = split ? new_output({positions}, input.options().dtype(acc)) : at::Tensor();
  auto lse = new_output(prep.position_shape, input.options().dtype(acc));
  at::Tensor denominator;
  PYOPS_DISPATCH_FLOATING(input.scalar_type(), prep.op, [&] {
    using T = acc_t<scalar_t>;
    const auto args = loss_args<T>(prep, options);
    denominator = prep.soft ? soft_denominator(prep) : target_weight_sum(prep.target, args);
    const T scale = reduction == kMean ? T(1 / cpu_value(denominator)) : T(1);
    const ForwardOut<T> out{losses.mutable_data_ptr<T>(),
                            split ? smooth.mutable_data_ptr<T>() : nullptr,
                            lse.mutable_data_ptr<T>()};
    const scalar_t* xp = prep.input.const_data_ptr<scalar_t>();
    const scalar_t* qp = prep.soft ? prep.target.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* tp = prep.soft ? nullptr : prep.target.const_data_ptr<int64_t>();
    scalar_t* gp = grad ? grad->mutable_data_ptr<scalar_t>() : nullptr;
    if (positions > 0 && s.dim > 0) {
      for_each_piece<T>(s, [&](const Piece& piece) {
        thread_local Stage<scalar_t> stage;
        if (s.inner == 1) {
          const int64_t p = piece.offset / s.dim, target = tp ? tp[p] : 0;
          const auto row = [&](const auto* x, const auto* q, auto* g) {
            ce_forward_row(x, q, p, target, args, out);
            if (g) ce_backward_row(x, q, g, target, scale, out.lse[p], args);
          };
          if (args.cap == T(0)) {
            row(xp + piece.offset, qp ? qp + piece.offset : nullptr,
                gp ? gp + piece.offset : nullptr);
            return;
          }
          const T* x = staged_logits(stage, xp, piece, args);
          T* g = gp ? stage.out(2, gp, piece) : nullptr;
          row(x, qp ? stage.in(1, qp, piece) : nullptr, g);
          if (g) {
            through_soft_cap(g, x, piece.width, args.cap);
            stage.store(2, gp, piece);
          }
        } else {
          const T* x = staged_logits(stage, xp, piece, args);
          const T* q = qp ? stage.in(1, qp, piece) : nullptr;
          const int64_t o = piece.offset / (s.dim * s.inner), j = piece.offset % s.inner;
          ce_forward_tile(x, q, stage.stride(piece), piece.width, o * s.inner + j, tp, args, out);
        }
      });
    } else {  // no positions or no classes; targets are still checked above
      losses.zero_();
      if (split) smooth.zero_();
      lse.fill_(-std::numeric_limits<double>::infinity());
    }
  });
  return {class_loss_output(losses, smooth, reduction, denominator, denominator, prep,
                            options.label_smoothing, loss_dtype),
          lse};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                                 const std::optional<at::Tensor>& weight,
                                                 int64_t reduction, int64_t ignore_index,
                                                 double label_smoothing, double lse_square_scale,
                                                 double softcap) {
  constexpr const char* op = "pyops::cross_entropy";
  check_reduction(reduction);
  const auto options = class_options(ignore_index, label_smoothing, lse_square_scale, softcap);
  const Prepared prep = prepare_classes(op, input, target, weight, /*allow_soft=*/true);
  return ce_forward(prep, reduction, options, nullptr, input.scalar_type());
}

// The kernels of cross_entropy_backward's host code (loss_inputs.h).
struct CrossEntropyKernels {
  static at::Tensor scale(const at::Tensor& grad, int64_t reduction, const Prepared& prep,
                          int64_t ignore_index) {
    const auto acc = acc_dtype(prep.input.scalar_type());
    at::Tensor denominator = prep.soft ? soft_denominator(prep) : at::Tensor();
    if (!prep.soft) {
      AT_DISPATCH_FLOATING_TYPES(acc, "pyops::cross_entropy_backward", [&] {
        denominator =
            target_weight_sum(prep.target, loss_args<scalar_t>(prep, plain(ignore_index)));
      });
    }
    return upstream_scale(grad, reduction, denominator, prep.shape.outer * prep.shape.inner, acc);
  }

  template <typename scalar_t>
  static void backward(const Prepared& prep, const ClassOptions& options, const at::Tensor& lse,
                       const at::Tensor& grad_scale, at::Tensor& result) {
    using T = acc_t<scalar_t>;
    const auto& s = prep.shape;
    const auto args = loss_args<T>(prep, options);
    const GradScale<T> scale(grad_scale);
    const T* lp = lse.const_data_ptr<T>();
    const scalar_t* xp = prep.input.const_data_ptr<scalar_t>();
    const scalar_t* qp = prep.soft ? prep.target.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* tp = prep.soft ? nullptr : prep.target.const_data_ptr<int64_t>();
    scalar_t* rp = result.mutable_data_ptr<scalar_t>();
    for_each_piece<T>(s, [&](const Piece& piece) {
      if (s.inner == 1 && args.cap == T(0)) {  // rows read and written as they are stored
        const int64_t p = piece.offset / s.dim;
        ce_backward_row(xp + piece.offset, qp ? qp + piece.offset : nullptr, rp + piece.offset,
                        tp ? tp[p] : 0, scale[p], lp[p], args);
        return;
      }
      thread_local Stage<scalar_t> stage;
      const T* x = staged_logits(stage, xp, piece, args);
      const T* q = qp ? stage.in(1, qp, piece) : nullptr;
      T* gi = stage.out(2, rp, piece);
      if (s.inner == 1) {
        const int64_t p = piece.offset / s.dim;
        ce_backward_row(x, q, gi, tp ? tp[p] : 0, scale[p], lp[p], args);
      } else {
        const int64_t o = piece.offset / (s.dim * s.inner), j = piece.offset % s.inner;
        ce_backward_tile(x, q, gi, stage.stride(piece), piece.width, o * s.inner + j, tp, scale,
                         lp, args);
      }
      if (args.cap != T(0)) through_soft_cap(gi, x, piece.rows * piece.width, args.cap);
      stage.store(2, rp, piece);
    });
  }
};

// One pass where positions are rows of the input's own memory (the gradient written row by row
// while the row is in cache); otherwise the forward and the backward kernels in turn.
at::Tensor cross_entropy_grad_in_forward(const at::Tensor& input, const at::Tensor& target,
                                         const std::optional<at::Tensor>& weight,
                                         int64_t reduction, int64_t ignore_index,
                                         double label_smoothing, at::Tensor& grad_input,
                                         double lse_square_scale, double softcap) {
  constexpr const char* op = "pyops::cross_entropy_grad_in_forward";
  check_grad_in_forward(input, reduction, grad_input);
  const auto options = class_options(ignore_index, label_smoothing, lse_square_scale, softcap);
  const Prepared prep = prepare_classes(op, input, target, weight, /*allow_soft=*/true);
  const auto acc = acc_dtype(input.scalar_type());
  if (prep.shape.inner == 1 && prep.input.is_same(input) &&
      grad_input.strides() == input.strides()) {
    return std::get<0>(ce_forward(prep, reduction, options, &grad_input, acc));
  }
  auto [loss, lse] = ce_forward(prep, reduction, options, nullptr, acc);
  grad_input.copy_(::pyops::cross_entropy_backward<Backend, CrossEntropyKernels>(
      at::ones({}, loss.options()), input, target, weight, reduction, ignore_index,
      label_smoothing, lse, lse_square_scale, softcap));
  return loss;
}

void scale_unless_one_(at::Tensor& self, const at::Tensor& scale) {
  TORCH_CHECK(scale.numel() == 1, "scale_unless_one_: scale must have one element");
  if (cpu_value(scale) != 1.0) self.mul_(scale.reshape({}));
}

// ---- nll_loss -------------------------------------------------------------------------------

// Memory offset of class c at position p in prep.input (dense, positions in logical order).
int64_t element_offset(const Shape3& s, int64_t p, int64_t c) {
  return (p / s.inner) * s.dim * s.inner + c * s.inner + p % s.inner;
}

at::Tensor nll_loss(const at::Tensor& input, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, int64_t reduction,
                    int64_t ignore_index) {
  check_reduction(reduction);
  const Prepared prep =
      prepare_classes("pyops::nll_loss", input, target, weight, /*allow_soft=*/false);
  const auto& s = prep.shape;
  const int64_t positions = s.outer * s.inner;
  auto losses = new_output({positions}, input.options().dtype(acc_dtype(input.scalar_type())));
  at::Tensor denominator;
  PYOPS_DISPATCH_FLOATING(input.scalar_type(), prep.op, [&] {
    using T = acc_t<scalar_t>;
    const auto args = loss_args<T>(prep, plain(ignore_index));
    const scalar_t* xp = prep.input.const_data_ptr<scalar_t>();
    const int64_t* tp = prep.target.const_data_ptr<int64_t>();
    T* lp = losses.mutable_data_ptr<T>();
    parallel_for(0, positions, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        if (tp[p] == ignore_index) {
          lp[p] = 0;
        } else {
          const int64_t t = checked_target(tp[p], s.dim);
          lp[p] = -args.w(t) * static_cast<T>(xp[element_offset(s, p, t)]);
        }
      }
    });
    denominator = target_weight_sum(prep.target, args);
  });
  return reduce_losses(losses, reduction, denominator, prep.position_shape, input.scalar_type());
}

at::Tensor nll_loss_backward(const at::Tensor& grad, const at::Tensor& input,
                             const at::Tensor& target, const std::optional<at::Tensor>& weight,
                             int64_t reduction, int64_t ignore_index) {
  check_reduction(reduction);
  const Prepared prep =
      prepare_classes("pyops::nll_loss_backward", input, target, weight, /*allow_soft=*/false);
  const auto& s = prep.shape;
  const int64_t positions = s.outer * s.inner;
  auto result = output_like(prep.input).zero_();
  PYOPS_DISPATCH_FLOATING(input.scalar_type(), prep.op, [&] {
    using T = acc_t<scalar_t>;
    const auto args = loss_args<T>(prep, plain(ignore_index));
    const GradScale<T> scale(grad, reduction, target_weight_sum(prep.target, args), positions);
    const int64_t* tp = prep.target.const_data_ptr<int64_t>();
    scalar_t* rp = result.mutable_data_ptr<scalar_t>();
    parallel_for(0, positions, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        if (tp[p] == ignore_index) continue;
        const int64_t t = checked_target(tp[p], s.dim);
        rp[element_offset(s, p, t)] = static_cast<scalar_t>(-args.w(t) * scale[p]);
      }
    });
  });
  return in_input_layout(input, result);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) { PYOPS_CROSS_ENTROPY_KERNELS(m); }

}  // namespace pyops::cpu
