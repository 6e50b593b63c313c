// A C++ user of the pyops op library: cross-entropy loss and its gradient through the registered
// operators, checked against ATen's own log_softmax + nll_loss. Exits non-zero on a mismatch.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>
#include <optional>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kMean = 1;  // at::Reduction::Mean
constexpr int64_t kIgnore = -100;

// The trailing doubles: label_smoothing, lse_square_scale (z-loss), softcap.
using Forward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                   const std::optional<at::Tensor>&, int64_t,
                                                   int64_t, double, double, double);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, int64_t, int64_t, double,
                            const at::Tensor&, double, double);

}  // namespace

int main() {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto forward = dispatcher.findSchemaOrThrow("pyops::cross_entropy", "").typed<Forward>();
  const auto backward =
      dispatcher.findSchemaOrThrow("pyops::cross_entropy_backward", "").typed<Backward>();

  at::manual_seed(0);
  const auto logits = at::randn({8, 10});
  const auto target = at::tensor(std::vector<int64_t>{0, 3, 9, kIgnore, 4, 4, 1, 7});

  const auto [loss, lse] =
      forward.call(logits, target, std::nullopt, kMean, kIgnore, 0.0, 0.0, 0.0);
  const auto grad = backward.call(at::ones({}), logits, target, std::nullopt, kMean, kIgnore, 0.0,
                                  lse, 0.0, 0.0);

  // Reference: ATen's composite, and its gradient written out (softmax - one_hot) / count.
  const auto expected = at::nll_loss(at::log_softmax(logits, 1), target, {}, kMean, kIgnore);
  const auto valid = target.ne(kIgnore);
  const auto one_hot = at::one_hot(target.clamp_min(0), 10).to(at::kFloat);
  const auto expected_grad = (at::softmax(logits, 1) - one_hot) * valid.unsqueeze(1) /
                             valid.sum().to(at::kFloat);

  std::cout << "pyops::cross_entropy  " << loss.item().toFloat() << "\n";
  std::cout << "aten reference        " << expected.item().toFloat() << "\n";
  const bool ok = at::allclose(loss, expected, 1e-5, 1e-6) &&
                  at::allclose(grad, expected_grad, 1e-5, 1e-6);
  std::cout << (ok ? "loss and gradient match" : "MISMATCH") << std::endl;
  return ok ? 0 : 1;
}
