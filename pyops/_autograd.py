"""Fake (meta) kernels and autograd for every pyops operator.

Every backward is written with differentiable ops (pyops backward ops, which have autograd of
their own here, or plain torch ops), so double backward works throughout.
"""

import torch

ops = torch.ops.pyops


def _fake_like(x):
    # Kernels keep a dense input's strides and make anything else contiguous: empty_like does too.
    return torch.empty_like(x)


def _save_output(ctx, inputs, output):
    ctx.save_for_backward(output)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


# ---- activations --------------------------------------------------------------------------

for _name in ("sigmoid", "tanh", "relu"):
    torch.library.register_fake(f"pyops::{_name}")(_fake_like)


@torch.library.register_fake("pyops::relu_")
def _(self):
    return None


for _name in ("sigmoid_backward", "tanh_backward", "relu_backward"):
    torch.library.register_fake(f"pyops::{_name}")(lambda grad, out: torch.empty_like(out))


def _activation_backward(backward_op):
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return backward_op(grad, out)

    return backward


torch.library.register_autograd(
    "pyops::sigmoid", _activation_backward(ops.sigmoid_backward), setup_context=_save_output)
torch.library.register_autograd(
    "pyops::tanh", _activation_backward(ops.tanh_backward), setup_context=_save_output)
torch.library.register_autograd(
    "pyops::relu", _activation_backward(ops.relu_backward), setup_context=_save_output)


# Second order. For grad_in = g * f'(y): d/dg is the same backward op applied to the incoming
# gradient; d/dy differentiates f'(y) written in terms of y.
def _sigmoid_backward_backward(ctx, gg):
    grad, out = ctx.saved_tensors
    d_grad = ops.sigmoid_backward(gg, out) if ctx.needs_input_grad[0] else None
    d_out = gg * grad * (1 - 2 * out) if ctx.needs_input_grad[1] else None
    return d_grad, d_out


def _tanh_backward_backward(ctx, gg):
    grad, out = ctx.saved_tensors
    d_grad = ops.tanh_backward(gg, out) if ctx.needs_input_grad[0] else None
    d_out = -2 * gg * grad * out if ctx.needs_input_grad[1] else None
    return d_grad, d_out


def _relu_backward_backward(ctx, gg):
    grad, out = ctx.saved_tensors
    d_grad = ops.relu_backward(gg, out) if ctx.needs_input_grad[0] else None
    return d_grad, None  # piecewise constant in out


torch.library.register_autograd(
    "pyops::sigmoid_backward", _sigmoid_backward_backward, setup_context=_save_inputs)
torch.library.register_autograd(
    "pyops::tanh_backward", _tanh_backward_backward, setup_context=_save_inputs)
torch.library.register_autograd(
    "pyops::relu_backward", _relu_backward_backward, setup_context=_save_inputs)


# ---- softmax, log_softmax -----------------------------------------------------------------

for _name in ("softmax", "log_softmax"):
    torch.library.register_fake(f"pyops::{_name}")(lambda x, dim: _fake_like(x))
for _name in ("softmax_backward", "log_softmax_backward"):
    torch.library.register_fake(f"pyops::{_name}")(lambda grad, out, dim: torch.empty_like(out))


def _save_output_and_dim(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.dim = inputs[1]


def _save_tensors_and_dim(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:-1])
    ctx.dim = inputs[-1]


def _softmax_family_backward(backward_op):
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return backward_op(grad, out, ctx.dim), None

    return backward


torch.library.register_autograd(
    "pyops::softmax", _softmax_family_backward(ops.softmax_backward),
    setup_context=_save_output_and_dim)
torch.library.register_autograd(
    "pyops::log_softmax", _softmax_family_backward(ops.log_softmax_backward),
    setup_context=_save_output_and_dim)


# softmax_backward(g, y) = y * (g - s), s = sum(g * y) over dim.
def _softmax_backward_backward(ctx, gg):
    grad, out = ctx.saved_tensors
    dim = ctx.dim
    d_grad = ops.softmax_backward(gg, out, dim) if ctx.needs_input_grad[0] else None
    d_out = None
    if ctx.needs_input_grad[1]:
        s = (grad * out).sum(dim, keepdim=True)
        d_out = gg * (grad - s) - grad * (gg * out).sum(dim, keepdim=True)
    return d_grad, d_out, None


# log_softmax_backward(g, y) = g - exp(y) * sum(g) over dim.
def _log_softmax_backward_backward(ctx, gg):
    grad, out = ctx.saved_tensors
    dim = ctx.dim
    probs = out.exp()
    d_grad = gg - (gg * probs).sum(dim, keepdim=True) if ctx.needs_input_grad[0] else None
    d_out = -gg * probs * grad.sum(dim, keepdim=True) if ctx.needs_input_grad[1] else None
    return d_grad, d_out, None


torch.library.register_autograd(
    "pyops::softmax_backward", _softmax_backward_backward, setup_context=_save_tensors_and_dim)
torch.library.register_autograd(
    "pyops::log_softmax_backward", _log_softmax_backward_backward,
    setup_context=_save_tensors_and_dim)
