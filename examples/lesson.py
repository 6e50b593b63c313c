"""The lesson (shared/seed/lesson-activations-losses.txt), cell by cell, with pyops next to torch.

Run: python examples/lesson.py. Each line prints pyops' result, then torch's.
"""

import torch
import torch.nn.functional as TF

import pyops.functional as PF


def show(title, ours, theirs):
    print(f"{title}\n  pyops: {ours}\n  torch: {theirs}")
    ours_t = ours if isinstance(ours, (tuple, list)) else [ours]
    theirs_t = theirs if isinstance(theirs, (tuple, list)) else [theirs]
    for a, b in zip(ours_t, theirs_t):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def main():
    torch.manual_seed(0)
    a = torch.linspace(-100, 100, 10)
    show("sigmoid(linspace(-100, 100, 10))", PF.sigmoid(a), torch.sigmoid(a))
    a = torch.linspace(-1, 1, 10)
    show("tanh(linspace(-1, 1, 10))", PF.tanh(a), torch.tanh(a))
    show("relu(linspace(-1, 1, 10))", PF.relu(a), torch.relu(a))

    # MSE and its gradient, by autograd.grad and by backward.
    x = torch.ones(1)
    w = torch.full([1], 2.0, requires_grad=True)
    show("autograd.grad(mse_loss(1, x*w), [w])",
         torch.autograd.grad(PF.mse_loss(torch.ones(1), x * w), [w]),
         torch.autograd.grad(TF.mse_loss(torch.ones(1), x * w), [w]))
    w_torch = w.detach().clone().requires_grad_()
    PF.mse_loss(torch.ones(1), x * w).backward()
    TF.mse_loss(torch.ones(1), x * w_torch).backward()
    show("mse_loss(...).backward(); w.grad", w.grad, w_torch.grad)

    # The softmax Jacobian, one row at a time.
    a = torch.rand(3, requires_grad=True)
    p_ours, p_torch = PF.softmax(a, dim=0), TF.softmax(a, dim=0)
    show("softmax Jacobian rows 1 and 2",
         [torch.autograd.grad(p_ours[i], [a], retain_graph=True)[0] for i in (1, 2)],
         [torch.autograd.grad(p_torch[i], [a], retain_graph=True)[0] for i in (1, 2)])

    # Perceptron: one sigmoid unit under MSE.
    x = torch.randn(1, 10)
    w_ours = torch.randn(1, 10, requires_grad=True)
    w_torch = w_ours.detach().clone().requires_grad_()
    PF.mse_loss(torch.ones(1, 1), PF.sigmoid(x @ w_ours.t())).backward()
    TF.mse_loss(torch.ones(1, 1), torch.sigmoid(x @ w_torch.t())).backward()
    show("perceptron w.grad", w_ours.grad, w_torch.grad)

    # MLP layer: two sigmoid units.
    w_ours = torch.randn(2, 10, requires_grad=True)
    w_torch = w_ours.detach().clone().requires_grad_()
    loss_ours = PF.mse_loss(torch.ones(1, 2), PF.sigmoid(x @ w_ours.t()))
    loss_torch = TF.mse_loss(torch.ones(1, 2), torch.sigmoid(x @ w_torch.t()))
    loss_ours.backward()
    loss_torch.backward()
    show("MLP loss", loss_ours.detach(), loss_torch.detach())
    show("MLP w.grad", w_ours.grad, w_torch.grad)

    # The chain rule: dy2/dy1 * dy1/dw1 == dy2/dw1, with pyops' tanh between the layers.
    x = torch.tensor(1.0)
    w1 = torch.tensor(2.0, requires_grad=True)
    w2 = torch.tensor(2.0, requires_grad=True)
    y1 = PF.tanh(x * w1 + 1)
    y2 = y1 * w2 + 1
    dy2_dy1 = torch.autograd.grad(y2, [y1], retain_graph=True)[0]
    dy1_dw1 = torch.autograd.grad(y1, [w1], retain_graph=True)[0]
    dy2_dw1 = torch.autograd.grad(y2, [w1], retain_graph=True)[0]
    show("chain rule: dy2/dy1 * dy1/dw1 vs dy2/dw1", dy2_dy1 * dy1_dw1, dy2_dw1)

    # Cross-entropy is the NLL of the log of softmax.
    logits = torch.randn(4, 10)
    t = torch.randint(0, 10, (4,))
    show("cross_entropy vs nll_loss(log(softmax))",
         PF.cross_entropy(logits, t), PF.nll_loss(torch.log(PF.softmax(logits, 1)), t))
    show("cross_entropy, pyops vs torch", PF.cross_entropy(logits, t), TF.cross_entropy(logits, t))
    print("every cell agrees")


if __name__ == "__main__":
    main()
