"""Logistic regression on scikit-learn's bundled breast-cancer data (no download), trained with
pyops' fused sigmoid + binary cross-entropy and with torch's, from the same seed."""

import torch
from sklearn.datasets import load_breast_cancer

from _train import report, standardized_split, train_both


def main():
    data = load_breast_cancer()
    x_train, y_train, x_test, y_test = standardized_split(data.data, data.target)
    y_train, y_test = y_train.float(), y_test.float()

    def forward(model, x, y, ops):
        return ops["bce_with_logits"](model(x).squeeze(1), y)

    results = train_both(lambda: torch.nn.Linear(x_train.shape[1], 1), forward,
                         (x_train, y_train), epochs=200, lr=0.05)

    def accuracy(model):
        with torch.no_grad():
            return ((model(x_test).squeeze(1) > 0).float() == y_test).float().mean().item()

    report(results, accuracy)


if __name__ == "__main__":
    main()
