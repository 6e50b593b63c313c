"""Drop-in replacements for torch.nn modules, backed by pyops.functional."""

from torch import nn

from . import functional as F

__all__ = ["Sigmoid", "Tanh", "ReLU", "Softmax", "LogSoftmax", "CrossEntropyLoss", "NLLLoss",
           "MSELoss", "BCELoss", "BCEWithLogitsLoss", "HingeLoss", "MultiMarginLoss"]


# Each module subclasses torch's: the same constructor, state, repr and pickling; only the
# computation differs. So pyops.convert can swap a module's class in place.

class Sigmoid(nn.Sigmoid):
    def forward(self, input):
        return F.sigmoid(input)


class Tanh(nn.Tanh):
    def forward(self, input):
        return F.tanh(input)


class ReLU(nn.ReLU):
    def forward(self, input):
        return F.relu(input, inplace=self.inplace)


class Softmax(nn.Softmax):
    def forward(self, input):
        return F.softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(nn.LogSoftmax):
    def forward(self, input):
        return F.log_softmax(input, self.dim, _stacklevel=5)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(nn.NLLLoss):
    def forward(self, input, target):
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class MSELoss(nn.MSELoss):
    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class BCELoss(nn.BCELoss):
    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.weight,
                                                  pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class MultiMarginLoss(nn.MultiMarginLoss):
    def forward(self, input, target):
        return F.multi_margin_loss(input, target, p=self.p, margin=self.margin,
                                   weight=self.weight, reduction=self.reduction)


class HingeLoss(nn.Module):
    """The lesson's binary hinge loss (no torch twin): see pyops.functional.hinge_loss."""

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.margin = margin
        self.reduction = reduction

    def forward(self, input, target):
        return F.hinge_loss(input, target, margin=self.margin, reduction=self.reduction)

    def extra_repr(self):
        return f"margin={self.margin}, reduction={self.reduction}"
