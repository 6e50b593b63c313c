// Autograd of every pyops operator, as C++ autograd::Functions on the Autograd key: small,
// launch-bound calls then cost the dispatcher's overhead only, not the Python autograd layer's
// (3-7 us per op, more than a small op's kernels). Every backward is written in differentiable
// ops (the pyops backward ops have autograd of their own here), so double backward works, except
// where a forward computes the gradient too (cross_entropy_grad_in_forward,
// linear_cross_entropy). The fake kernels are in pyops/_autograd.py.
#include "activations.h"
#include "gil.h"
#include "loss_inputs.h"

#include <ATen/FuncTorchTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>

namespace pyops {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

// pyops::<kName> through the dispatcher, looked up once.
template <const char* kName, typename Signature>
const c10::TypedOperatorHandle<Signature>& op() {
  static const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow(kName, "").template typed<Signature>();
  return handle;
}

// The kernel below autograd: what a Function's forward computes.
template <const char* kName, typename Signature, typename... Args>
decltype(auto) below_autograd(Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op<kName, Signature>().call(std::forward<Args>(args)...);
}

using OptionalTensor = std::optional<Tensor>;

bool requires_grad(const Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const OptionalTensor& t) { return t.has_value() && requires_grad(*t); }
template <typename Scalar>
bool requires_grad(const Scalar&) { return false; }

// A Function's outputs as its operator returns them.
template <typename Result>
Result as_result(const Tensor& output) { return output; }
template <typename Result>
Result as_result(const variable_list& outputs) { return {outputs[0], outputs[1]}; }

// Gives an output of F's forward its edge to node (an input returned as is would otherwise lose
// its own history: it is copied, as no pyops kernel returns one on purpose).
template <typename F>
void attach(Tensor& out, const c10::intrusive_ptr<torch::autograd::CppNode<F>>& node,
            const variable_list& inputs) {
  if (!out.defined()) {
    node->output_info_.emplace_back();
    node->add_input_metadata(torch::autograd::Node::undefined_input());
    return;
  }
  for (const auto& input : inputs) {
    if (input.defined() && input.is_same(out)) {
      at::NoGradGuard no_grad;
      out = out.clone();
    }
  }
  node->output_info_.emplace_back(out);
  torch::autograd::create_gradient_edge(out, node);
}

template <typename F>
void attach(variable_list& outs, const c10::intrusive_ptr<torch::autograd::CppNode<F>>& node,
            const variable_list& inputs) {
  for (auto& out : outs) attach(out, node, inputs);
}

// A call of F's operator that autograd records: the node torch::autograd::Function::apply
// builds, without that function's general handling of outputs (views, in-place modified inputs,
// non-differentiable outputs) that no pyops forward returns, and which costs a small call
// several allocations. functorch transforms are refused, as apply refuses them.
template <typename F, typename... Args>
auto record(Args&... args) {
  if (const auto& functorch = at::functorch::functorchTLSAccessor()) {
    functorch->checkSupportsCppAutogradFunction();
  }
  auto node = c10::make_intrusive<torch::autograd::CppNode<F>>();
  variable_list inputs;
  inputs.reserve(sizeof...(Args));
  node->is_variable_input_.reserve(sizeof...(Args));
  torch::autograd::extract_vars(node->is_variable_input_, inputs, args...);
  node->input_info_.reserve(inputs.size());
  for (const auto& input : inputs) node->input_info_.emplace_back(input);
  node->set_ctx_grad_fn(node);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  auto outputs = [&] {
    at::AutoGradMode off(false);
    return F::forward(&node->ctx_, args...);
  }();
  attach(outputs, node, inputs);
  node->save_variables_to_ctx();  // after the edges: a saved output is known as one
  return outputs;
}

// The Autograd kernel of Function F's operator (F::kName, F::Signature): F records the call when
// autograd would; otherwise the kernel below autograd runs, without building a node.
template <typename F, typename Signature = typename F::Signature>
struct AutogradKernel;

// No pyops operator has a forward-mode derivative: a dual tensor is refused, not passed through
// without its tangent.
void refuse_forward_ad(const char* name, const Tensor& t) {
  TORCH_CHECK(!t.defined() || !t._fw_grad(/*level=*/0).defined(), name,
              ": forward-mode AD is not supported");
}
void refuse_forward_ad(const char* name, const OptionalTensor& t) {
  if (t.has_value()) refuse_forward_ad(name, *t);
}
template <typename Scalar>
void refuse_forward_ad(const char*, const Scalar&) {}

template <typename F, typename Result, typename... Args>
struct AutogradKernel<F, Result(Args...)> {
  static Result call(Args... args) {
    (refuse_forward_ad(F::kName, args), ...);
    if (!at::GradMode::is_enabled() || !(requires_grad(args) || ...)) {
      return below_autograd<F::kName, Result(Args...)>(args...);
    }
    return as_result<Result>(record<F>(args...));
  }
};

using Binary = Tensor(const Tensor&, const Tensor&);
using WithDim = Tensor(const Tensor&, int64_t);
using BinaryWithDim = Tensor(const Tensor&, const Tensor&, int64_t);

// ---- activations, softmax, log_softmax ----------------------------------------------------

// y = f(x) or f(x, dim); the backward op takes the saved output (grad, y, [dim]), or with
// kSavesInput the input (grad, x).
template <const char* kForward, const char* kBackward, bool kSavesInput, typename... Dim>
struct Saves {
  static constexpr const char* kName = kForward;
  using Signature = Tensor(const Tensor&, Dim...);

  static Tensor forward(AutogradContext* ctx, const Tensor& x, Dim... dim) {
    auto out = below_autograd<kName, Signature>(x, dim...);
    ctx->save_for_backward({kSavesInput ? x : out});
    ((ctx->saved_data["dim"] = dim), ...);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(1 + sizeof...(Dim));  // nothing for dim
    result[0] = op<kBackward, Tensor(const Tensor&, const Tensor&, Dim...)>().call(
        grads[0], ctx->get_saved_variables()[0], ctx->saved_data["dim"].to<Dim>()...);
    return result;
  }
};

// grad_in = g * f'(s), s the saved output or input: d/dg is the same backward op applied to the
// incoming gradient; d/ds = gg * g * (d f'/ds), written here per activation (none where f' is
// piecewise constant).
using SecondDerivative = Tensor (*)(const Tensor& saved);

Tensor sigmoid_second(const Tensor& y) { return 1 - 2 * y; }
Tensor tanh_second(const Tensor& y) { return -2 * y; }
constexpr SecondDerivative relu_second = nullptr;

Tensor silu_second(const Tensor& x) {
  const auto s = x.sigmoid();
  return s * (1 - s) * (2 + x * (1 - 2 * s));
}

Tensor gelu_second(const Tensor& x) {  // pdf(x) * (2 - x^2)
  return (x * x * -0.5).exp() * (M_2_SQRTPI * M_SQRT1_2 * 0.5) * (2 - x * x);
}

Tensor gelu_tanh_second(const Tensor& x) {
  constexpr double kBeta = M_SQRT2 * M_2_SQRTPI * 0.5, kKappa = 0.044715;
  const auto t = (kBeta * (x + kKappa * x * x * x)).tanh();
  const auto du = kBeta * (1 + 3 * kKappa * x * x);  // u = beta (x + kappa x^3), t = tanh(u)
  return (1 - t * t) * (du + 0.5 * x * (6 * kBeta * kKappa * x - 2 * t * du * du));
}

template <const char* kBackward, SecondDerivative kSecond>
struct ActivationBackward {
  static constexpr const char* kName = kBackward;
  using Signature = Binary;

  static Tensor forward(AutogradContext* ctx, const Tensor& grad, const Tensor& saved) {
    ctx->save_for_backward({grad, saved});
    return below_autograd<kName, Signature>(grad, saved);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& gg = grads[0];
    const auto tensors = ctx->get_saved_variables();
    const auto &grad = tensors[0], &saved = tensors[1];
    Tensor d_grad, d_saved;
    if (ctx->needs_input_grad(0)) d_grad = op<kBackward, Binary>().call(gg, saved);
    if constexpr (kSecond != nullptr) {
      if (ctx->needs_input_grad(1)) d_saved = gg * grad * kSecond(saved);
    }
    return {d_grad, d_saved};
  }
};

#define PYOPS_SAVES_out false
#define PYOPS_SAVES_self true

constexpr char kSoftmax[] = "pyops::softmax";
constexpr char kSoftmaxBackward[] = "pyops::softmax_backward";
constexpr char kLogSoftmax[] = "pyops::log_softmax";
constexpr char kLogSoftmaxBackward[] = "pyops::log_softmax_backward";

// softmax_backward(g, y) = y * (g - s), s = sum(g * y) over dim.
variable_list softmax_second(AutogradContext* ctx, const Tensor& gg, const Tensor& grad,
                             const Tensor& out, int64_t dim) {
  Tensor d_grad, d_out;
  if (ctx->needs_input_grad(0)) d_grad = op<kSoftmaxBackward, BinaryWithDim>().call(gg, out, dim);
  if (ctx->needs_input_grad(1)) {
    const auto s = (grad * out).sum(dim, /*keepdim=*/true);
    d_out = gg * (grad - s) - grad * (gg * out).sum(dim, /*keepdim=*/true);
  }
  return {d_grad, d_out, Tensor()};
}

// log_softmax_backward(g, y) = g - exp(y) * sum(g) over dim.
variable_list log_softmax_second(AutogradContext* ctx, const Tensor& gg, const Tensor& grad,
                                 const Tensor& out, int64_t dim) {
  const auto probs = out.exp();
  Tensor d_grad, d_out;
  if (ctx->needs_input_grad(0)) d_grad = gg - (gg * probs).sum(dim, /*keepdim=*/true);
  if (ctx->needs_input_grad(1)) d_out = -gg * probs * grad.sum(dim, /*keepdim=*/true);
  return {d_grad, d_out, Tensor()};
}

using SoftmaxSecond = variable_list (*)(AutogradContext*, const Tensor&, const Tensor&,
                                        const Tensor&, int64_t);

template <const char* kBackward, SoftmaxSecond kSecond>
struct SoftmaxFamilyBackward {
  static constexpr const char* kName = kBackward;
  using Signature = BinaryWithDim;

  static Tensor forward(AutogradContext* ctx, const Tensor& grad, const Tensor& out, int64_t dim) {
    ctx->save_for_backward({grad, out});
    ctx->saved_data["dim"] = dim;
    return below_autograd<kName, Signature>(grad, out, dim);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return kSecond(ctx, grads[0], saved[0], saved[1], ctx->saved_data["dim"].toInt());
  }
};

// ---- cross_entropy, nll_loss: shared helpers ----------------------------------------------

constexpr char kCrossEntropy[] = "pyops::cross_entropy";
constexpr char kCrossEntropyBackward[] = "pyops::cross_entropy_backward";
constexpr char kCrossEntropyGradInForward[] = "pyops::cross_entropy_grad_in_forward";
constexpr char kScaleUnlessOne[] = "pyops::scale_unless_one_";
constexpr char kNllLoss[] = "pyops::nll_loss";
constexpr char kNllLossBackward[] = "pyops::nll_loss_backward";

using CrossEntropySig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&,
                                                   const OptionalTensor&, int64_t, int64_t,
                                                   double, double, double);
using CrossEntropyBackwardSig = Tensor(const Tensor&, const Tensor&, const Tensor&,
                                       const OptionalTensor&, int64_t, int64_t, double,
                                       const Tensor&, double, double);
using GradInForwardSig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, int64_t,
                                int64_t, double, Tensor&, double, double);
using NllLossSig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, int64_t, int64_t);
using NllLossBackwardSig = Tensor(const Tensor&, const Tensor&, const Tensor&,
                                  const OptionalTensor&, int64_t, int64_t);

int64_t class_dim_of(const Tensor& input) { return input.dim() == 1 ? 0 : 1; }

OptionalTensor optional(const Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

// Loss arguments that are not tensors, kept in the context.
void save_loss_args(AutogradContext* ctx, int64_t reduction, int64_t ignore_index) {
  ctx->saved_data["reduction"] = reduction;
  ctx->saved_data["ignore_index"] = ignore_index;
}

int64_t saved_int(AutogradContext* ctx, const char* key) { return ctx->saved_data[key].toInt(); }
double saved_double(AutogradContext* ctx, const char* key) {
  return ctx->saved_data[key].toDouble();
}

// cross_entropy's floating-point options, kept in the context.
void save_class_options(AutogradContext* ctx, double label_smoothing, double lse_square_scale,
                        double softcap) {
  ctx->saved_data["label_smoothing"] = label_smoothing;
  ctx->saved_data["lse_square_scale"] = lse_square_scale;
  ctx->saved_data["softcap"] = softcap;
}

// A size as a number: under torch.compile a dynamic size is specialised here.
int64_t concrete_size(const Tensor& t, int64_t dim) {
  return t.sym_size(dim).guard_int(__FILE__, __LINE__);
}

// The number of loss positions: input's elements outside the class dim.
int64_t positions_of(const Tensor& input) {
  int64_t positions = 1;
  for (int64_t d = 0; d < input.dim(); ++d) {
    if (d != class_dim_of(input)) positions *= concrete_size(input, d);
  }
  return positions;
}

// weight (or ones) shaped to broadcast along input's class dim.
Tensor broadcast_weight(const Tensor& weight, const Tensor& input) {
  std::vector<c10::SymInt> shape(input.dim(), 1);
  const auto dim = class_dim_of(input);
  shape[dim] = input.sym_size(dim);
  if (!weight.defined()) return at::ones_symint(shape, input.options());
  return weight.view_symint(shape);
}

// The upstream gradient per position, shaped to broadcast along the class dim. The 'mean'
// denominator is a count (a Scalar) or summed target weights (a 0-dim tensor).
template <typename Denominator>
Tensor position_scale(const Tensor& grad, int64_t reduction, const Denominator& denominator,
                      const Tensor& input) {
  if (reduction == kNone) return grad.unsqueeze(class_dim_of(input));
  return reduction == kMean ? grad / denominator : grad;
}

template <typename Denominator>
Tensor reduce_positions(const Tensor& values, int64_t reduction, const Denominator& denominator) {
  if (reduction == kNone) return values;
  const auto total = values.sum();
  return reduction == kMean ? total / denominator : total;
}

// A gradient that a forward computed for an upstream gradient of one and kept in ctx under key,
// scaled by the upstream gradient g: in place, handed out once (undefined after that). Compiled
// autograd (the GIL held) calls a backward with a copy of the context: there the gradient stays
// in the node's own context, for a later backward of a retained graph, and is scaled into a new
// tensor.
Tensor hand_out(AutogradContext* ctx, const char* key, const Tensor& g) {
  const auto found = ctx->saved_data.find(key);
  if (found == ctx->saved_data.end()) return Tensor();
  auto grad = found->second.toTensor();
  if (gil::hooks.held()) return grad * g.reshape({});
  ctx->saved_data.erase(found);
  op<kScaleUnlessOne, void(Tensor&, const Tensor&)>().call(grad, g);
  return grad;
}

// ---- cross_entropy ------------------------------------------------------------------------

// The logits the loss sees, c * tanh(x / c) with a softcap c (else x itself), and their first
// two derivatives with respect to x (undefined without a softcap).
struct Capped {
  Tensor logits, slope, curvature;
};

Capped capped(const Tensor& x, double cap) {
  if (cap == 0) return {x, Tensor(), Tensor()};
  const auto t = at::tanh(x / cap);
  const auto slope = 1 - t * t;
  return {t * cap, slope, -2 / cap * t * slope};
}

struct CrossEntropy {
  static constexpr const char* kName = kCrossEntropy;
  using Signature = CrossEntropySig;

  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                               const OptionalTensor& weight, int64_t reduction,
                               int64_t ignore_index, double label_smoothing,
                               double lse_square_scale, double softcap) {
    auto [loss, lse] = below_autograd<kName, Signature>(
        input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale,
        softcap);
    ctx->save_for_backward({input, target, weight.value_or(Tensor()), lse});
    save_loss_args(ctx, reduction, ignore_index);
    save_class_options(ctx, label_smoothing, lse_square_scale, softcap);
    ctx->set_materialize_grads(false);  // no zeros for an output that gets no gradient
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &input = saved[0], &target = saved[1], &weight = saved[2];
    const auto reduction = saved_int(ctx, "reduction");
    const double smoothing = saved_double(ctx, "label_smoothing");
    const double z = saved_double(ctx, "lse_square_scale"), cap = saved_double(ctx, "softcap");
    const auto &grad_loss = grads[0], &grad_lse = grads[1];
    variable_list result(8);
    if (grad_loss.defined() && ctx->needs_input_grad(0)) {
      result[0] = op<kCrossEntropyBackward, CrossEntropyBackwardSig>().call(
          grad_loss, input, target, optional(weight), reduction, saved_int(ctx, "ignore_index"),
          smoothing, saved[3], z, cap);
    }
    std::optional<Capped> wide;  // the capped logits in the kernels' compute type, made once
    const auto logits = [&]() -> const Capped& {
      if (!wide) wide = capped(input.to(acc_dtype(input.scalar_type())), cap);
      return *wide;
    };
    const auto dim = class_dim_of(input);
    // probability targets: d loss / d q = -(1 - eps) w log p
    if (grad_loss.defined() && ctx->needs_input_grad(1)) {
      const auto& x = logits().logits;
      const auto scale = position_scale(grad_loss.to(x.scalar_type()), reduction,
                                        c10::Scalar(positions_of(input)), input);
      const auto log_p = op<kLogSoftmax, WithDim>().call(x, dim);
      const auto w = broadcast_weight(weight.defined() ? weight.to(x.scalar_type()) : weight, x);
      result[1] = (-(1 - smoothing) * w * log_p * scale).to(target.scalar_type());
    }
    // d lse / d input = the capped logits' softmax times the cap's slope
    if (grad_lse.defined() && ctx->needs_input_grad(0)) {
      const auto& x = logits();
      auto d_input = grad_lse.unsqueeze(dim) * op<kSoftmax, WithDim>().call(x.logits, dim);
      if (x.slope.defined()) d_input = d_input * x.slope;
      d_input = d_input.to(input.scalar_type());
      result[0] = result[0].defined() ? result[0] + d_input : d_input;
    }
    return result;
  }
};

// Per-position weight of the target class, 0 where ignored; and the mask of the others.
std::pair<Tensor, Tensor> target_weights(const Tensor& target, const Tensor& weight,
                                         int64_t ignore_index, const Tensor& like) {
  const auto valid = target != ignore_index;
  const auto safe = at::where(valid, target, at::zeros_like(target));
  const auto w = weight.defined() ? weight.index({safe}).to(like.scalar_type())
                                  : at::ones_like(target, like.options());
  return {at::where(valid, w, at::zeros({}, like.options())), valid};
}

// Second order, in differentiable torch and pyops ops (slower than the fused kernels). With
// z = the capped logits (slope u = dz/dx, curvature u' = du/dx), p = softmax(z), the gradient is
// s * u * m, m = p * A - b (A with z-loss's 2 zeta lse), so that along gg
//   d grad  = reduced sum of gg * u * m,
//   d input = s * (gg * u' * m + u * (A * softmax_backward(h, p) + 2 zeta p sum(h p))), h = gg u,
//   d q     = s * (1 - eps) * w * (sum(h p) - h)   (probability targets).
struct CrossEntropyBackward {
  static constexpr const char* kName = kCrossEntropyBackward;
  using Signature = CrossEntropyBackwardSig;

  static Tensor forward(AutogradContext* ctx, const Tensor& grad, const Tensor& input,
                        const Tensor& target, const OptionalTensor& weight, int64_t reduction,
                        int64_t ignore_index, double label_smoothing, const Tensor& lse,
                        double lse_square_scale, double softcap) {
    ctx->save_for_backward({grad, input, target, weight.value_or(Tensor())});
    save_loss_args(ctx, reduction, ignore_index);
    save_class_options(ctx, label_smoothing, lse_square_scale, softcap);
    return below_autograd<kName, Signature>(grad, input, target, weight, reduction, ignore_index,
                                            label_smoothing, lse, lse_square_scale, softcap);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& gg = grads[0];
    const auto saved = ctx->get_saved_variables();
    const auto &grad = saved[0], &input = saved[1], &target = saved[2], &weight = saved[3];
    const auto reduction = saved_int(ctx, "reduction");
    const double eps = saved_double(ctx, "label_smoothing");
    const double zeta = saved_double(ctx, "lse_square_scale");
    const auto dim = class_dim_of(input);
    const double eps_c = eps / static_cast<double>(concrete_size(input, dim));
    const auto z = capped(input, saved_double(ctx, "softcap"));
    const auto probs = op<kSoftmax, WithDim>().call(z.logits, dim);
    const auto w = broadcast_weight(weight, input);
    const auto h = z.slope.defined() ? gg * z.slope : gg;
    Tensor s, a, b, valid_b, d_grad, d_target;
    // d_grad = reduced sum of gg * u * m over each position.
    const auto positions_reduced = [&](const Tensor& m, const auto& denominator) {
      return reduce_positions((h * m).sum(dim), reduction, denominator);
    };
    // A's z-loss share, 2 zeta lse per position.
    const auto z_share = [&] { return 2 * zeta * at::logsumexp(z.logits, dim, true); };
    if (target.is_floating_point()) {
      const c10::Scalar positions(positions_of(input));
      s = position_scale(grad, reduction, positions, input);
      b = w * (target * (1 - eps) + eps_c);
      a = b.sum(dim, /*keepdim=*/true);
      if (zeta != 0) a = a + z_share();
      if (ctx->needs_input_grad(0)) d_grad = positions_reduced(probs * a - b, positions);
      if (ctx->needs_input_grad(2)) {
        d_target = s * (1 - eps) * w * ((h * probs).sum(dim, /*keepdim=*/true) - h);
      }
    } else {
      const auto [w_t, valid] =
          target_weights(target, weight, saved_int(ctx, "ignore_index"), input);
      const auto denominator = w_t.sum();
      s = position_scale(grad, reduction, denominator, input);
      valid_b = valid.unsqueeze(dim);
      a = ((1 - eps) * w_t + eps_c * w.sum()).unsqueeze(dim);
      if (zeta != 0) a = a + z_share();
      a = a * valid_b;
      const auto safe = at::where(valid, target, at::zeros_like(target)).unsqueeze(dim);
      const auto one_hot = at::zeros_like(input).scatter(dim, safe, 1.0);
      b = (eps_c * w + (1 - eps) * w_t.unsqueeze(dim) * one_hot) * valid_b;
      if (ctx->needs_input_grad(0)) d_grad = positions_reduced(probs * a - b, denominator);
    }
    Tensor d_input;
    if (ctx->needs_input_grad(1)) {
      auto term = a * op<kSoftmaxBackward, BinaryWithDim>().call(h, probs, dim);
      if (zeta != 0) {
        auto lse_term = 2 * zeta * probs * (h * probs).sum(dim, /*keepdim=*/true);
        term = term + (valid_b.defined() ? lse_term * valid_b : lse_term);
      }
      if (z.slope.defined()) term = z.slope * term + gg * z.curvature * (probs * a - b);
      d_input = s * term;
    }
    variable_list result(10);
    result[0] = d_grad;
    result[1] = d_input;
    result[2] = d_target;
    return result;
  }
};

// cross_entropy whose forward also writes the input gradient (for an upstream gradient of one)
// into grad_input, so the logits are read once in all; grad_input may share input's memory, the
// logits then lost. The backward scales that buffer in place and hands it out: the graph can be
// backpropagated once, and not differentiated twice.
struct CrossEntropyGradInForward {
  static constexpr const char* kName = kCrossEntropyGradInForward;
  static constexpr const char* kGradKey = "grad_input";
  static constexpr const char* kVersionKey = "grad_input_version";
  using Signature = GradInForwardSig;

  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                        const OptionalTensor& weight, int64_t reduction, int64_t ignore_index,
                        double label_smoothing, Tensor& grad_input, double lse_square_scale,
                        double softcap) {
    TORCH_CHECK(!requires_grad(target) && !requires_grad(weight), kName,
                ": not differentiable with respect to target or weight");
    // A tensor of a graph overwritten behind autograd's back would corrupt its gradients; input
    // is overwritten through input.detach(), which shares its version counter.
    TORCH_CHECK(!grad_input.requires_grad(), kName, ": grad_input must not require grad");
    auto loss = below_autograd<kName, Signature>(input, target, weight, reduction, ignore_index,
                                                 label_smoothing, grad_input, lse_square_scale,
                                                 softcap);
    // A backward that saved these logits (tanh's saves its output) must see them overwritten.
    torch::autograd::impl::bump_version(grad_input);
    ctx->saved_data[kGradKey] = grad_input;
    ctx->saved_data[kVersionKey] = static_cast<int64_t>(grad_input._version());
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), kName,
                ": double backward (create_graph=True) is not supported");
    // The buffer may be the logits' memory, which the caller still holds. (Compiled autograd
    // traces with stand-ins, whose versions are not the buffer's.)
    const auto kept = ctx->saved_data.find(kGradKey);
    TORCH_CHECK(kept == ctx->saved_data.end() || gil::hooks.held() ||
                    kept->second.toTensor()._version() == ctx->saved_data[kVersionKey].toInt(),
                kName, ": the gradient's buffer (the logits, with overwrite_input) was modified "
                "in place after the forward");
    variable_list result(9);
    result[0] = hand_out(ctx, kGradKey, grads[0]);
    TORCH_CHECK(result[0].defined(), "cross_entropy(grad_in_forward=True): the gradient was "
                "already handed out; this graph can be backpropagated once only");
    return result;
  }
};

// ---- nll_loss -------------------------------------------------------------------------------

struct NllLoss {
  static constexpr const char* kName = kNllLoss;
  using Signature = NllLossSig;

  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                        const OptionalTensor& weight, int64_t reduction, int64_t ignore_index) {
    ctx->save_for_backward({input, target, weight.value_or(Tensor())});
    save_loss_args(ctx, reduction, ignore_index);
    return below_autograd<kName, Signature>(input, target, weight, reduction, ignore_index);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto grad_input = op<kNllLossBackward, NllLossBackwardSig>().call(
        grads[0], saved[0], saved[1], optional(saved[2]),
        saved_int(ctx, "reduction"), saved_int(ctx, "ignore_index"));
    return {grad_input, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// nll_loss_backward is linear in grad and constant in input: its adjoint is nll_loss itself.
struct NllLossBackward {
  static constexpr const char* kName = kNllLossBackward;
  using Signature = NllLossBackwardSig;

  static Tensor forward(AutogradContext* ctx, const Tensor& grad, const Tensor& input,
                        const Tensor& target, const OptionalTensor& weight, int64_t reduction,
                        int64_t ignore_index) {
    ctx->save_for_backward({target, weight.value_or(Tensor())});
    save_loss_args(ctx, reduction, ignore_index);
    return below_autograd<kName, Signature>(grad, input, target, weight, reduction, ignore_index);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Tensor d_grad;
    if (ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      d_grad = op<kNllLoss, NllLossSig>().call(grads[0], saved[0], optional(saved[1]),
                                                saved_int(ctx, "reduction"),
                                                saved_int(ctx, "ignore_index"));
    }
    return {d_grad, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};


// ---- the lesson's other losses ----------------------------------------------------------------
// The kernels compute the loss and its input gradient. Every other derivative (target, weight,
// pos_weight, and all second-order ones) differentiates an ATen expression of the same loss,
// which autograd differentiates to any order.

using Boxed = std::vector<c10::IValue>;  // an operator's arguments, as a boxed call takes them

// A saved argument list: the first `tensors` arguments are tensors (or absent optional ones),
// saved for backward; the rest (scalars, multi_margin's weight) go to saved_data as one list,
// except that a tensor among them gets an entry of its own ("rest.<i>", None in the list):
// compiled autograd lifts a tensor of saved_data into its graph only as an entry.
void save_arguments(AutogradContext* ctx, const Boxed& args, size_t tensors) {
  variable_list saved;
  for (size_t i = 0; i < tensors; ++i) {
    saved.push_back(args[i].isTensor() ? args[i].toTensor() : Tensor());
  }
  ctx->save_for_backward(saved);
  c10::impl::GenericList rest(c10::AnyType::get());
  for (size_t i = tensors; i < args.size(); ++i) {
    if (args[i].isTensor()) ctx->saved_data["rest." + std::to_string(rest.size())] = args[i];
    rest.push_back(args[i].isTensor() ? c10::IValue() : args[i]);
  }
  ctx->saved_data["rest"] = rest;
}

Boxed saved_rest(AutogradContext* ctx) {
  auto rest = ctx->saved_data["rest"].toList().vec();
  for (size_t i = 0; i < rest.size(); ++i) {
    if (!rest[i].isNone()) continue;
    const auto tensor = ctx->saved_data.find("rest." + std::to_string(i));
    if (tensor != ctx->saved_data.end()) rest[i] = tensor->second;
  }
  return rest;
}

// Whether leading argument i (of the saved tensors t) needs a gradient: autograd numbers only the
// tensor arguments that are present.
bool needs_grad(AutogradContext* ctx, const variable_list& t, size_t i) {
  if (!t[i].defined()) return false;
  size_t edge = 0;
  for (size_t j = 0; j < i; ++j) edge += t[j].defined();
  return ctx->needs_input_grad(edge);
}

c10::IValue boxed(const Tensor& t) { return t.defined() ? c10::IValue(t) : c10::IValue(); }

// d <grad_out, fn(tensors)> / d tensors[i] for i in wanted (undefined elsewhere); zeros where
// fn is piecewise constant in them.
template <typename Fn>
variable_list grads_through(const Fn& fn, const variable_list& tensors,
                            const std::vector<size_t>& wanted, const Tensor& grad_out) {
  variable_list result(tensors.size());
  if (wanted.empty()) return result;
  const bool create_graph = at::GradMode::is_enabled();
  const gil::Released no_gil;  // the engine refuses to run under the GIL
  Tensor out;
  {
    at::AutoGradMode enable(true);
    out = fn(tensors);
  }
  variable_list inputs;
  for (const auto i : wanted) inputs.push_back(tensors[i]);
  if (!out.requires_grad()) {
    for (const auto i : wanted) result[i] = at::zeros_like(tensors[i]);
    return result;
  }
  const auto grads = torch::autograd::grad({out}, inputs, {grad_out}, /*retain_graph=*/true,
                                           create_graph, /*allow_unused=*/true);
  for (size_t k = 0; k < wanted.size(); ++k) result[wanted[k]] = grads[k];
  return result;
}

Tensor times_weight(const Tensor& values, const Tensor& w) {
  return w.defined() ? values * w : values;
}

// v over the element count of t, a number (a tensor of t's dtype would round or overflow it);
// symbolic where torch.compile traces with dynamic shapes.
Tensor per_element(const Tensor& v, const Tensor& t) { return v / c10::Scalar(t.sym_numel()); }

// Each loss: its operators, how many leading tensor arguments, its terms before reduction
// (per element, or per row), the division 'mean' makes, and torch's own first-order formula for
// argument i where it is not the derivative of the terms (at clamps).
struct MseSpec {
  static constexpr char kName[] = "pyops::mse_loss";
  static constexpr char kBackward[] = "pyops::mse_loss_backward";
  static constexpr size_t kTensors = 3;  // input, target, weight
  static Tensor terms(const variable_list& t, const Boxed&) {
    return times_weight((t[0] - t[1]).pow(2), t[2]);
  }
  static Tensor mean_of(const Tensor& v, const variable_list& t) {
    return t[2].defined() ? v / t[2].sum() : per_element(v, t[0]);
  }
  // The target gradient as torch's -(grad_input): the scale first, so 2 * (x - y) cannot
  // overflow where the gradient itself is finite.
  static Tensor override_grad(size_t i, const Tensor& s, const variable_list& t) {
    return i == 1 ? -times_weight(s * 2 * (t[0] - t[1]), t[2]) : Tensor();
  }
};

Tensor stable_log_sigmoid(const Tensor& x) {
  return at::minimum(x, at::zeros_like(x)) - at::log1p(at::exp(-x.abs()));
}

struct BceLogitsSpec {
  static constexpr char kName[] = "pyops::binary_cross_entropy_with_logits";
  static constexpr char kBackward[] = "pyops::binary_cross_entropy_with_logits_backward";
  static constexpr size_t kTensors = 4;  // input, target, weight, pos_weight
  static Tensor terms(const variable_list& t, const Boxed&) {
    const auto& [x, y, w, pw] = std::tie(t[0], t[1], t[2], t[3]);
    const auto loss = pw.defined() ? (1 - y) * x - ((pw - 1) * y + 1) * stable_log_sigmoid(x)
                                   : (1 - y) * x - stable_log_sigmoid(x);
    return times_weight(loss, w);
  }
  static Tensor mean_of(const Tensor& v, const variable_list& t) { return per_element(v, t[0]); }
  static Tensor override_grad(size_t, const Tensor&, const variable_list&) { return Tensor(); }
};

struct BceSpec {
  static constexpr char kName[] = "pyops::binary_cross_entropy";
  static constexpr char kBackward[] = "pyops::binary_cross_entropy_backward";
  static constexpr size_t kTensors = 3;  // input, target, weight
  static Tensor terms(const variable_list& t, const Boxed&) {
    const auto log_x = at::clamp_min(at::log(t[0]), -100);
    const auto log_1mx = at::clamp_min(at::log1p(-t[0]), -100);
    return times_weight((t[1] - 1) * log_1mx - t[1] * log_x, t[2]);
  }
  static Tensor mean_of(const Tensor& v, const variable_list& t) { return per_element(v, t[0]); }
  // torch's target gradient is -logit(input), without the loss' clamp of the logs at -100.
  static Tensor override_grad(size_t i, const Tensor& s, const variable_list& t) {
    return i == 1 ? times_weight(-at::logit(t[0]) * s, t[2]) : Tensor();
  }
};

struct HingeSpec {
  static constexpr char kName[] = "pyops::hinge_loss";
  static constexpr char kBackward[] = "pyops::hinge_loss_backward";
  static constexpr size_t kTensors = 2;  // input, target; then margin, reduction
  static Tensor terms(const variable_list& t, const Boxed& rest) {
    return at::clamp_min(rest[0].toDouble() - t[1] * t[0], 0);
  }
  static Tensor mean_of(const Tensor& v, const variable_list& t) { return per_element(v, t[0]); }
  static Tensor override_grad(size_t, const Tensor&, const variable_list&) { return Tensor(); }
};

struct MultiMarginSpec {
  static constexpr char kName[] = "pyops::multi_margin_loss";
  static constexpr char kBackward[] = "pyops::multi_margin_loss_backward";
  static constexpr size_t kTensors = 2;  // input, target; then p, margin, weight, reduction
  static Tensor terms(const variable_list& t, const Boxed& rest) {
    const auto& input = t[0];
    const auto x = input.reshape_symint({-1, input.dim() ? input.sym_size(-1) : 1});
    const auto target = t[1].reshape({-1, 1});
    const auto z = rest[1].toDouble() - x.gather(1, target) + x;
    const auto h =
        at::where(z > 0, z, at::zeros_like(z)).pow(rest[0].toInt()).scatter(1, target, 0.0);
    auto rows = h.sum(1) / c10::Scalar(x.sym_size(1));
    if (rest[2].isTensor()) rows = rows * rest[2].toTensor().index({target.reshape(-1)});
    return rows.reshape_symint(t[1].sym_sizes());  // 'none' has the target's shape, as torch
  }
  static Tensor mean_of(const Tensor& v, const variable_list& t) {
    return t[0].dim() == 2 ? v / c10::Scalar(t[0].sym_size(0)) : v;
  }
  static Tensor override_grad(size_t, const Tensor&, const variable_list&) { return Tensor(); }
};

// The loss reduced as its operator reduces it; the mean as a sum of scaled terms, so that of
// no terms its derivatives are 0, not 0/0.
template <typename Spec>
Tensor reduced(const variable_list& t, const Boxed& rest) {
  const auto values = Spec::terms(t, rest);
  const auto reduction = rest.back().toInt();
  if (reduction == kNone) return values;
  return reduction == kMean ? Spec::mean_of(values, t).sum() : values.sum();
}

// A forward that saves its arguments (the first kTensors of them as tensors) and runs kOp.
template <const char* kOp, size_t kTensors, typename Signature>
struct SavesArguments;

template <const char* kOp, size_t kTensors, typename... A>
struct SavesArguments<kOp, kTensors, Tensor(A...)> {
  static constexpr const char* kName = kOp;
  using Signature = Tensor(A...);

  static Tensor forward(AutogradContext* ctx, A... args) {
    save_arguments(ctx, Boxed{c10::IValue(args)...}, kTensors);
    return below_autograd<kName, Signature>(args...);
  }
};

template <typename Spec, typename Signature>
struct Loss;

template <typename Spec, typename... A>
struct Loss<Spec, Tensor(A...)> : SavesArguments<Spec::kName, Spec::kTensors, Tensor(A...)> {
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op =
        c10::Dispatcher::singleton().findSchemaOrThrow(Spec::kBackward, "");
    const auto t = ctx->get_saved_variables();
    const auto rest = saved_rest(ctx);
    const auto& grad = grads[0];
    Tensor scale;  // the upstream gradient per element, where a gradient besides input's is wanted
    std::vector<size_t> through;
    variable_list result(sizeof...(A));
    for (size_t i = 1; i < Spec::kTensors; ++i) {
      if (!needs_grad(ctx, t, i)) continue;
      if (!scale.defined()) scale = rest.back().toInt() == kMean ? Spec::mean_of(grad, t) : grad;
      result[i] = Spec::override_grad(i, scale, t);
      if (!result[i].defined()) through.push_back(i);
    }
    const auto loss = [&](const variable_list& v) { return reduced<Spec>(v, rest); };
    const auto derived = grads_through(loss, t, through, grad);
    for (const auto i : through) result[i] = derived[i];
    if (needs_grad(ctx, t, 0)) {
      Boxed stack{grad};
      for (const auto& tensor : t) stack.push_back(boxed(tensor));
      stack.insert(stack.end(), rest.begin(), rest.end());
      backward_op.callBoxed(stack);
      result[0] = stack[0].toTensor();
    }
    return result;
  }
};

// The backward op: (grad, tensors..., rest...) -> the input gradient; its derivatives
// differentiate the input gradient of the loss expression.
template <typename Spec, typename Signature>
struct LossBackward;

template <typename Spec, typename... A>
struct LossBackward<Spec, Tensor(A...)>
    : SavesArguments<Spec::kBackward, Spec::kTensors + 1, Tensor(A...)> {
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();  // grad, then the loss' tensors
    const auto rest = saved_rest(ctx);
    const auto input_gradient = [&](const variable_list& v) {
      variable_list t(v.begin() + 1, v.end());
      if (!t[0].requires_grad()) t[0] = t[0].detach().requires_grad_();
      return torch::autograd::grad({reduced<Spec>(t, rest)}, {t[0]}, {v[0]},
                                   /*retain_graph=*/true, /*create_graph=*/true)[0];
    };
    std::vector<size_t> wanted;
    for (size_t i = 0; i < saved.size(); ++i) {
      if (needs_grad(ctx, saved, i)) wanted.push_back(i);
    }
    auto result = grads_through(input_gradient, saved, wanted, grads[0]);
    result.resize(sizeof...(A));
    return result;
  }
};

using WeightedSig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, int64_t);
using WeightedBackwardSig = Tensor(const Tensor&, const Tensor&, const Tensor&,
                                   const OptionalTensor&, int64_t);
using BceLogitsSig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&,
                            const OptionalTensor&, int64_t);
using BceLogitsBackwardSig = Tensor(const Tensor&, const Tensor&, const Tensor&,
                                    const OptionalTensor&, const OptionalTensor&, int64_t);
using HingeSig = Tensor(const Tensor&, const Tensor&, double, int64_t);
using HingeBackwardSig = Tensor(const Tensor&, const Tensor&, const Tensor&, double, int64_t);
using MarginSig = Tensor(const Tensor&, const Tensor&, int64_t, double, const OptionalTensor&,
                         int64_t);
using MarginBackwardSig = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, double,
                                 const OptionalTensor&, int64_t);

// ---- linear_cross_entropy ---------------------------------------------------------------------

constexpr char kLinearCrossEntropy[] = "pyops::linear_cross_entropy";
constexpr char kLinearCrossEntropyGrads[] = "pyops::linear_cross_entropy_grads";
constexpr char kLinearCrossEntropyBackward[] = "pyops::linear_cross_entropy_backward";

using Mask = std::array<bool, 3>;
using LinearCrossEntropySig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&,
                                     const Tensor&, const OptionalTensor&, int64_t, int64_t,
                                     double, int64_t, double, double);
using LinearCrossEntropyGradsSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const OptionalTensor&, const Tensor&, const OptionalTensor&,
    int64_t, int64_t, double, int64_t, Mask, double, double);
using LinearCrossEntropyBackwardSig = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&, const Tensor&,
    const OptionalTensor&, int64_t, int64_t, double, int64_t, Mask, double, double);

// 'mean' and 'sum' compute their gradients in the forward (each chunk's logits once), which the
// first backward scales in place and hands out without a copy; a later backward of a retained
// graph computes them again, to the same bits. 'none' recomputes the logits in its backward.
// Neither is differentiable again: the gradients come from fused kernels, and a second
// derivative is refused rather than silently zero.
struct LinearCrossEntropy {
  static constexpr const char* kName = kLinearCrossEntropy;
  static constexpr std::array<const char*, 3> kGradKeys{"grad_input", "grad_weight", "grad_bias"};
  using Signature = LinearCrossEntropySig;

  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& linear_weight,
                        const OptionalTensor& linear_bias, const Tensor& target,
                        const OptionalTensor& weight, int64_t reduction, int64_t ignore_index,
                        double label_smoothing, int64_t chunk_size, double lse_square_scale,
                        double softcap) {
    TORCH_CHECK(!requires_grad(target) && !requires_grad(weight), kName,
                ": not differentiable with respect to target or weight");
    const Mask mask{requires_grad(input), requires_grad(linear_weight),
                    requires_grad(linear_bias)};
    save_arguments(ctx, Boxed{input, linear_weight, linear_bias, target, weight, reduction,
                              ignore_index, label_smoothing, chunk_size, lse_square_scale,
                              softcap}, 5);
    ctx->saved_data["mask"] = std::vector<bool>(mask.begin(), mask.end());
    if (reduction == kNone) {
      return below_autograd<kName, Signature>(input, linear_weight, linear_bias, target, weight,
                                              reduction, ignore_index, label_smoothing,
                                              chunk_size, lse_square_scale, softcap);
    }
    auto [loss, gi, gw, gb] = below_autograd<kLinearCrossEntropyGrads, LinearCrossEntropyGradsSig>(
        input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
        label_smoothing, chunk_size, mask, lse_square_scale, softcap);
    const std::array<Tensor, 3> forward_grads{gi, gw, gb};
    for (size_t i = 0; i < 3; ++i) {  // entries, as compiled autograd lifts only those
      if (mask[i]) ctx->saved_data[kGradKeys[i]] = forward_grads[i];
    }
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), kName,
                ": double backward (create_graph=True) is not supported");
    const auto wanted = ctx->saved_data["mask"].toBoolList();
    const Mask mask{wanted[0], wanted[1], wanted[2]};
    const auto args = saved_rest(ctx);
    const auto reduction = args[0].toInt(), ignore_index = args[1].toInt();
    const auto smoothing = args[2].toDouble();
    const auto chunk_size = args[3].toInt();
    const auto z = args[4].toDouble(), cap = args[5].toDouble();
    const auto s = ctx->get_saved_variables();
    variable_list result(11);
    if (reduction == kNone) {
      std::tie(result[0], result[1], result[2]) =
          op<kLinearCrossEntropyBackward, LinearCrossEntropyBackwardSig>().call(
              grads[0], s[0], s[1], optional(s[2]), s[3], optional(s[4]), reduction, ignore_index,
              smoothing, chunk_size, mask, z, cap);
      for (size_t i = 0; i < 3; ++i) {
        if (!mask[i]) result[i] = Tensor();  // the op's empty placeholder
      }
      return result;
    }
    bool from_forward = true;  // all wanted gradients kept by the forward, or none
    for (size_t i = 0; i < 3; ++i) {
      if (mask[i]) from_forward = (result[i] = hand_out(ctx, kGradKeys[i], grads[0])).defined();
    }
    if (from_forward) return result;
    const auto again = op<kLinearCrossEntropyGrads, LinearCrossEntropyGradsSig>().call(
        s[0], s[1], optional(s[2]), s[3], optional(s[4]), reduction, ignore_index, smoothing,
        chunk_size, mask, z, cap);
    const std::array<Tensor, 3> computed{std::get<1>(again), std::get<2>(again),
                                         std::get<3>(again)};
    for (size_t i = 0; i < 3; ++i) {
      if (!mask[i]) continue;
      result[i] = computed[i];
      op<kScaleUnlessOne, void(Tensor&, const Tensor&)>().call(result[i], grads[0]);
    }
    return result;
  }
};

}  // namespace

// Each operator's autograd::Function, a struct with a plain name of its own: autograd demangles
// a node's type name on every backward call, and a template's name is several times as slow to
// demangle. The name also reads well in grad_fn: CppNode<pyops::backward_of::softmax>.
namespace backward_of {
#define PYOPS_FUNCTION(op, ...) \
  struct op : __VA_ARGS__, Function<op> {};
#define PYOPS_ACTIVATION_FUNCTIONS(name, saved)                                  \
  PYOPS_FUNCTION(name, Saves<names::name, names::name##_backward, PYOPS_SAVES_##saved>) \
  PYOPS_FUNCTION(name##_backward, ActivationBackward<names::name##_backward, name##_second>)
PYOPS_ACTIVATIONS(PYOPS_ACTIVATION_FUNCTIONS)
#undef PYOPS_ACTIVATION_FUNCTIONS

// The other operators with autograd: X(op, what its Function derives from).
#define PYOPS_AUTOGRAD_OPS(X)                                                                   \
  X(softmax, Saves<kSoftmax, kSoftmaxBackward, false, int64_t>)                                 \
  X(log_softmax, Saves<kLogSoftmax, kLogSoftmaxBackward, false, int64_t>)                       \
  X(softmax_backward, SoftmaxFamilyBackward<kSoftmaxBackward, softmax_second>)                  \
  X(log_softmax_backward, SoftmaxFamilyBackward<kLogSoftmaxBackward, log_softmax_second>)       \
  X(cross_entropy, CrossEntropy)                                                                \
  X(cross_entropy_backward, CrossEntropyBackward)                                               \
  X(cross_entropy_grad_in_forward, CrossEntropyGradInForward)                                   \
  X(linear_cross_entropy, LinearCrossEntropy)                                                   \
  X(nll_loss, NllLoss)                                                                          \
  X(nll_loss_backward, NllLossBackward)                                                         \
  X(mse_loss, Loss<MseSpec, WeightedSig>)                                                       \
  X(mse_loss_backward, LossBackward<MseSpec, WeightedBackwardSig>)                              \
  X(binary_cross_entropy_with_logits, Loss<BceLogitsSpec, BceLogitsSig>)                        \
  X(binary_cross_entropy_with_logits_backward, LossBackward<BceLogitsSpec, BceLogitsBackwardSig>) \
  X(binary_cross_entropy, Loss<BceSpec, WeightedSig>)                                           \
  X(binary_cross_entropy_backward, LossBackward<BceSpec, WeightedBackwardSig>)                  \
  X(hinge_loss, Loss<HingeSpec, HingeSig>)                                                      \
  X(hinge_loss_backward, LossBackward<HingeSpec, HingeBackwardSig>)                             \
  X(multi_margin_loss, Loss<MultiMarginSpec, MarginSig>)                                        \
  X(multi_margin_loss_backward, LossBackward<MultiMarginSpec, MarginBackwardSig>)
PYOPS_AUTOGRAD_OPS(PYOPS_FUNCTION)
#undef PYOPS_FUNCTION
}  // namespace backward_of
}  // namespace pyops

// CppNode<T>::apply hands name() to its checks' messages, and Node::name() demangles the node's
// type name on every call, a cost torch's own nodes do not pay: each apply here hands over the
// same name, demangled once.
namespace torch::autograd {
#define PYOPS_NODE_APPLY(op, ...)                                                        \
  template <>                                                                           \
  variable_list CppNode<pyops::backward_of::op>::apply(variable_list&& inputs) {         \
    static const std::string kName = name();                                            \
    std::lock_guard<std::mutex> lock(mutex_);                                           \
    return CppNode_apply_functional<pyops::backward_of::op>(                            \
        std::move(inputs), ctx_, is_variable_input_, output_info_, kName);              \
  }
#define PYOPS_NODE_APPLY_ACTIVATION(name, saved) \
  PYOPS_NODE_APPLY(name) PYOPS_NODE_APPLY(name##_backward)
PYOPS_ACTIVATIONS(PYOPS_NODE_APPLY_ACTIVATION)
PYOPS_AUTOGRAD_OPS(PYOPS_NODE_APPLY)
#undef PYOPS_NODE_APPLY_ACTIVATION
#undef PYOPS_NODE_APPLY
}  // namespace torch::autograd

TORCH_LIBRARY_IMPL(pyops, Autograd, m) {
  using namespace pyops;
#define PYOPS_AUTOGRAD(op, ...) m.impl(#op, &AutogradKernel<backward_of::op>::call);
#define PYOPS_AUTOGRAD_ACTIVATION(name, saved) PYOPS_AUTOGRAD(name) PYOPS_AUTOGRAD(name##_backward)
  PYOPS_ACTIVATIONS(PYOPS_AUTOGRAD_ACTIVATION)
  PYOPS_AUTOGRAD_OPS(PYOPS_AUTOGRAD)
#undef PYOPS_AUTOGRAD_ACTIVATION
#undef PYOPS_AUTOGRAD
  // Parts of linear_cross_entropy's autograd, not differentiable themselves.
  m.impl("linear_cross_entropy_grads", torch::CppFunction::makeFallthrough());
  m.impl("linear_cross_entropy_backward", torch::CppFunction::makeFallthrough());
}
