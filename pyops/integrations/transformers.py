"""Hugging Face transformers' causal language models through pyops, in one call.

`apply(model)` makes a `*ForCausalLM` (any model whose forward calls its output embedding, a
`torch.nn.Linear`, on the last hidden state) compute its training loss with
`pyops.functional.linear_cross_entropy` from the last hidden state and the output embedding's
weight, so the logits are never materialized when labels are given; and it runs the model's
forward under `pyops.patch()` after `pyops.convert()`, so its activations, softmax and losses
reach pyops where pyops has them. transformers itself is not imported here: any model object
with `get_output_embeddings()` and a transformers-style forward works. Under FSDP2
(`fully_shard`), an output embedding sharded on its own computes the loss inside its own call,
so its weight is gathered for it.
"""

import contextlib
import functools

import torch

from .. import functional as F
from .._integration import convert, patch
from ..nn import through_head

IGNORE_INDEX = -100  # transformers' label for positions without a loss

# Config attributes that change the logits after the output embedding in ways the loss does not
# follow: the head alone is not the model's logits there. final_logit_softcapping (Gemma 2) is
# the loss's softcap.
_LOGIT_TRANSFORMS = ("logit_scale", "output_multiplier")


def _causal_lm_loss(hidden, head, labels, shift_labels, num_items_in_batch, softcap):
    """transformers' ForCausalLMLoss on the head's input instead of its output: labels shifted
    left (the last position ignored), 'mean' over the kept positions, or 'sum' over
    num_items_in_batch when the trainer gives it; the logits capped as the model caps them."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    reduction = "mean" if num_items_in_batch is None else "sum"
    # transformers upcasts the logits of a half-type model and takes a float32 loss: what
    # linear_cross_entropy gives under autocast (elsewhere it rounds the loss to the input's dtype)
    low = hidden.dtype in (torch.float16, torch.bfloat16)
    with torch.autocast(hidden.device.type, hidden.dtype) if low else contextlib.nullcontext():
        loss = F.linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), head.weight,
            shift_labels.reshape(-1).to(hidden.device), linear_bias=head.bias,
            reduction=reduction, softcap=softcap).float()
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def apply(model):
    """Routes `model` (a transformers causal LM) through pyops, in place; returns it.

    With `labels` (or `shift_labels`) the forward returns the loss and `logits=None`: pass
    `return_logits=True` to have the logits computed as well. Without labels the forward is the
    model's own (under `pyops.patch()`)."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise TypeError("pyops.integrations.transformers.apply: the model's output embedding must "
                        f"be a torch.nn.Linear, got {type(head).__name__}")
    config = getattr(model, "config", None)
    for name in _LOGIT_TRANSFORMS:
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"pyops.integrations.transformers.apply: the model sets "
                                      f"config.{name}, which changes its logits after the head")
    softcap = getattr(config, "final_logit_softcapping", None) or None
    convert(model, inplace=True)
    original = model.forward

    @functools.wraps(original)
    def forward(*args, labels=None, shift_labels=None, num_items_in_batch=None,
                return_logits=False, **kwargs):
        with patch():
            if labels is None and shift_labels is None:
                return original(*args, **kwargs)
            hidden = []

            def keep_hidden(h):
                hidden.append(h)
                if return_logits:
                    return torch.nn.Linear.forward(head, h)
                return h.new_empty((*h.shape[:-1], 0))  # what the model's own loss never sees

            head.forward = keep_hidden
            try:
                out = original(*args, **kwargs)
            finally:
                del head.forward
            loss = through_head(head, functools.partial(
                _causal_lm_loss, head=head, labels=labels, shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch, softcap=softcap), hidden[-1])
        fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
        return type(out)(loss=loss, logits=out.logits if return_logits else None, **fields)

    model.forward = forward
    return model
