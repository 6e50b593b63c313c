"""The fused LM head under FSDP2 (fully_shard), on 2 gloo ranks: a plain model ending in
pyops.nn.LinearCrossEntropyLoss and tiny Hugging Face causal LMs through
pyops.integrations.transformers.apply, sharded in the usual ways (the root alone, every block,
the head on its own), against the same model unsharded (a causal LM with its own loss) over two
training steps: the loss and every parameter's gradient."""

import copy

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

import pyops.nn as PN
from helpers import on_ranks

transformers = pytest.importorskip("transformers")

from pyops.integrations.transformers import apply  # noqa: E402

VOCAB, HIDDEN = 1000, 64


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
        self.loss = PN.LinearCrossEntropyLoss(8, 11, bias=True, label_smoothing=0.1)
        self.loss.lse_square_scale = 1e-2

    def forward(self, x, y):
        return self.loss(self.body(x), y)


def _plain(shard):
    torch.manual_seed(0)
    model = Plain().double()
    blocks = {"root": [], "blocks": [model.body[0], model.body[2], model.loss],
              "head": [model.body[0], model.body[2], model.loss.linear]}[shard]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 11, (6,), generator=gen)
    y[0] = -100
    return model, blocks, lambda m: m(x, y)


def _causal_lm(name, shard):
    torch.manual_seed(0)
    config = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    if name == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
        layers = model.model.layers
    else:  # GPT-2: the head tied to the input embedding
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4))
        layers = model.transformer.h
    blocks = {"root": [], "blocks": list(layers), "head": [*layers, model.lm_head]}[shard]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 12), generator=gen)
    labels = ids.clone()
    labels[:, :3] = -100
    return model, blocks, lambda m: m(input_ids=ids, labels=labels)


# (model, how it is sharded): each a list of modules given their own fully_shard before the root
CASES = [("plain", shard) for shard in ("root", "blocks", "head")] + [
    ("llama", shard) for shard in ("root", "blocks", "head")] + [("gpt2", "blocks")]


def _case(name, shard):
    return _plain(shard) if name == "plain" else _causal_lm(name, shard)


def _loss(out):
    return out if torch.is_tensor(out) else out.loss


def run_cases(rank, world):
    results = []
    for name, shard in CASES:
        reference, blocks, step = _case(name, shard)
        model = copy.deepcopy(reference)
        names = {id(m): n for n, m in reference.named_modules()}
        sharded = dict(model.named_modules())
        for block in blocks:
            fully_shard(sharded[names[id(block)]])
        fully_shard(model)
        if name != "plain":
            apply(model)
        losses, logits = [], None
        for _ in range(2):  # gradients accumulate over two steps
            out = step(model)
            _loss(out).backward()
            losses.append(_loss(out).detach())
            logits = None if torch.is_tensor(out) else out.logits
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        results.append((losses, grads, logits))
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return on_ranks(run_cases, 2, tmp_path_factory.mktemp("fsdp"))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{n}-{s}" for n, s in CASES])
def test_sharded_model_matches_unsharded(runs, index):
    name, shard = CASES[index]
    model, _, step = _case(name, shard)  # a causal LM's own loss, from its logits
    losses = []
    for _ in range(2):
        out = step(model)
        _loss(out).backward()
        losses.append(_loss(out).detach())
    tol = dict(rtol=1e-10, atol=1e-12) if name == "plain" else dict(rtol=1e-5, atol=1e-6)
    for rank_losses, grads, logits in (r[index] for r in runs):
        assert logits is None  # the head's logits never made
        torch.testing.assert_close(rank_losses, losses, **tol)
        assert grads.keys() == dict(model.named_parameters()).keys()
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, **tol, msg=n)
