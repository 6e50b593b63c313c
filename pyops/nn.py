"""Drop-in replacements for torch.nn modules, backed by pyops.functional."""

from torch import nn

from . import functional as F

__all__ = ["Sigmoid", "Tanh", "ReLU"]


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
