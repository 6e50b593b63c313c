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

# Config attributes that scale the logits after the output embedding, each model in its own way
# (Granite divides by logits_scaling, HyperCLOVAX multiplies; MPT's logit_scale goes unused): the
# head alone is not the model's logits there. final_logit_softcapping (Gemma 2) is the loss's
# softcap, where the model's own config sets it.
_LOGIT_TRANSFORMS = ("logit_scale", "output_multiplier", "logits_scaling", "lm_head_multiplier")


def _text_config(config):
    """The config of the language model: a multimodal model's text config, else config itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _check_logits_are_the_head(config):
    """Refuses a model whose config says its logits are more than its head's output, or whose
    text config (a multimodal model's) sets a softcap that some such models apply and some not."""
    text = _text_config(config)
    for where, c in (("config", config), ("config's text config", text)):
        for name in _LOGIT_TRANSFORMS:
            if getattr(c, name, None) not in (None, 1, 1.0):
                raise NotImplementedError(f"pyops.integrations.transformers.apply: the model's "
                                          f"{where} sets {name}, which changes its logits after "
                                          "the head")
    if text is not config and getattr(text, "final_logit_softcapping", None) and not getattr(
            config, "final_logit_softcapping", None):
        raise NotImplementedError("pyops.integrations.transformers.apply: the model's text config "
                                  "sets final_logit_softcapping, and whether the model caps its "
                                  "logits with it is not known from its config")


def _aux_loss_coef(model):
    """What a mixture-of-experts model multiplies its router's auxiliary loss by before adding it
    to the loss of labels (router_aux_loss_coef; JetMoE's aux_loss_coef), or None."""
    config = getattr(model, "config", None)
    text = _text_config(config)
    for owner, name in ((model, "router_aux_loss_coef"), (model, "aux_loss_coef"),
                        (config, "router_aux_loss_coef"), (text, "router_aux_loss_coef")):
        if getattr(owner, name, None) is not None:
            return getattr(owner, name)
    return None


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
    _check_logits_are_the_head(config)
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

            # the outputs by name (a tuple's positions differ by model), a tuple at the end if asked
            return_dict = kwargs.pop("return_dict", None)
            if return_dict is None:
                return_dict = getattr(config, "return_dict", True)
            head.forward = keep_hidden
            try:
                out = original(*args, return_dict=True, **kwargs)
            finally:
                del head.forward
            loss = through_head(head, functools.partial(
                _causal_lm_loss, head=head, labels=labels, shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch, softcap=softcap), hidden[-1])
            aux_loss = out.get("aux_loss")
            if aux_loss is not None:  # the model adds it to the loss of labels, which it had not
                coef = _aux_loss_coef(model)
                if coef is None:
                    raise NotImplementedError("pyops.integrations.transformers.apply: the model "
                                              "returns an aux_loss without a known coefficient")
                loss = loss + coef * aux_loss.to(loss.device)
        fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
        result = type(out)(loss=loss, logits=out.logits if return_logits else None, **fields)
        return result if return_dict else result.to_tuple()

    model.forward = forward
    return model
