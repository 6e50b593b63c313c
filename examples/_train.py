"""Shared by the training examples: the same model trained with pyops ops and with torch ops."""

import torch
import torch.nn.functional as TF

import pyops.functional as PF

TORCH_OPS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
             "cross_entropy": TF.cross_entropy,
             "bce_with_logits": TF.binary_cross_entropy_with_logits}
PYOPS_OPS = {"relu": PF.relu, "tanh": PF.tanh, "sigmoid": PF.sigmoid,
             "cross_entropy": PF.cross_entropy,
             "bce_with_logits": PF.binary_cross_entropy_with_logits}


def standardized_split(data, target, seed=0, test_fraction=0.25):
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(data, dtype=torch.float32)
    y = torch.tensor(target)
    order = torch.randperm(len(x), generator=gen)
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def train_both(make_model, forward, data, epochs, lr, seed=0):
    """Trains make_model() with forward(model, x, y, ops) under pyops and torch ops from the same
    seed; returns {name: (loss curve, model)}."""
    results = {}
    for name, ops in (("pyops", PYOPS_OPS), ("torch", TORCH_OPS)):
        torch.manual_seed(seed)
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        x, y = data
        curve = []
        for _ in range(epochs):
            opt.zero_grad()
            loss = forward(model, x, y, ops)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        results[name] = (curve, model)
    return results


def report(results, accuracy):
    (ours, model_ours), (theirs, model_theirs) = results["pyops"], results["torch"]
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, theirs))
    print(f"final loss    pyops {ours[-1]:.6f}   torch {theirs[-1]:.6f}")
    print(f"test accuracy pyops {accuracy(model_ours):.4f}   torch {accuracy(model_theirs):.4f}")
    print(f"largest relative gap between the loss curves: {worst:.2e}")
    assert worst < 1e-4, "the loss curves diverged"
