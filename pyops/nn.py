"""Drop-in replacements for torch.nn modules, backed by pyops.functional."""

from torch import nn

from . import functional as F

__all__ = ["Sigmoid", "Tanh", "ReLU", "Softmax", "LogSoftmax", "CrossEntropyLoss", "NLLLoss"]


class Sigmoid(nn.Module):
    def forward(self, input):
        return F.sigmoid(input)


class Tanh(nn.Module):
    def forward(self, input):
        return F.tanh(input)


class ReLU(nn.Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):
        return F.relu(input, inplace=self.inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Softmax(nn.Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.softmax(input, self.dim, _stacklevel=5)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(nn.Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.log_softmax(input, self.dim, _stacklevel=5)

    def extra_repr(self):
        return f"dim={self.dim}"


# Losses subclass torch's modules: the same constructor, buffers, state_dict and repr; only the
# computation differs.

class CrossEntropyLoss(nn.CrossEntropyLoss):
    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(nn.NLLLoss):
    def forward(self, input, target):
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)
