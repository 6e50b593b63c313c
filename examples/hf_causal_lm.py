"""A Hugging Face causal LM trained through pyops in one call, next to the same model unchanged.

A tiny LlamaForCausalLM (vocabulary 32000, hidden 256, 2 layers) is built from a config (nothing
downloaded), copied, and `pyops.integrations.transformers.apply` routes the copy's loss through
`linear_cross_entropy` (no logits materialized) and its activations and softmax through pyops.
Both learn one batch for a few steps from the same initial weights; the curves must agree.
"""

import copy

import torch
import transformers

from pyops.integrations.transformers import apply


def main(steps=5):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=256)
    plain = transformers.LlamaForCausalLM(config)
    routed = apply(copy.deepcopy(plain))
    ids = torch.randint(0, config.vocab_size, (4, 64))
    labels = ids.clone()
    labels[:, :8] = -100  # a prompt: no loss there
    curves = {}
    for name, model in (("pyops", routed), ("transformers", plain)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        curves[name] = []
        for _ in range(steps):
            out = model(input_ids=ids, labels=labels)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            curves[name].append(out.loss.item())
        print(f"{name:>12}: " + " ".join(f"{v:.4f}" for v in curves[name]))
    ours, theirs = torch.tensor(curves["pyops"]), torch.tensor(curves["transformers"])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    print(f"curves agree (largest difference {(ours - theirs).abs().max().item():.2e})")


if __name__ == "__main__":
    main()
