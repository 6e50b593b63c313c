"""pyops.integrations.transformers.apply on tiny random-initialised Hugging Face causal LMs
(built from a config, nothing downloaded): the same loss, gradients and training curve as the
model itself, no logits materialized, and a lower peak memory in a training step."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pyops.integrations.transformers import apply  # noqa: E402

VOCAB, HIDDEN = 32000, 256


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=512))


def _gemma2():  # final_logit_softcapping: the loss's softcap
    return transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
        final_logit_softcapping=0.5))  # small, so that the cap moves the loss


MODELS = pytest.mark.parametrize("make", [_llama, _gpt2, _gemma2], ids=["llama", "gpt2", "gemma2"])


def _pair(make):
    torch.manual_seed(0)
    theirs = make().eval()
    return apply(copy.deepcopy(theirs)), theirs


def _batch(batch=2, length=24, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=gen)
    labels = ids.clone()
    labels[:, :3] = -100  # a prompt without loss
    return ids, labels


def _assert_same_loss_and_gradients(ours, out, theirs, ref):
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()
    ref.loss.backward()
    ref_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@MODELS
def test_loss_and_every_gradient_match_the_model(make):
    ours, theirs = _pair(make)
    ids, labels = _batch()
    out = ours(input_ids=ids, labels=labels)
    ref = theirs(input_ids=ids, labels=labels)
    assert out.logits is None
    _assert_same_loss_and_gradients(ours, out, theirs, ref)


@MODELS
def test_a_half_type_model_gets_its_float32_loss(make):
    # transformers upcasts a bfloat16 model's logits: its loss is not rounded to bfloat16
    torch.manual_seed(0)
    theirs = make().eval().to(torch.bfloat16)
    ours = apply(copy.deepcopy(theirs))
    ids, labels = _batch()
    with torch.no_grad():
        out, ref = ours(input_ids=ids, labels=labels), theirs(input_ids=ids, labels=labels)
    assert out.loss.dtype == ref.loss.dtype == torch.float32
    assert abs(out.loss.item() - ref.loss.item()) < 1e-3


@MODELS
def test_logits_when_asked_and_without_labels(make):
    ours, theirs = _pair(make)
    ids, labels = _batch()
    with torch.no_grad():
        ref = theirs(input_ids=ids, labels=labels)
        both = ours(input_ids=ids, labels=labels, return_logits=True)
        plain = ours(input_ids=ids)
    torch.testing.assert_close(both.logits, ref.logits)
    torch.testing.assert_close(both.loss, ref.loss)
    torch.testing.assert_close(plain.logits, ref.logits)
    assert plain.loss is None


@MODELS
def test_num_items_in_batch_as_the_trainer_passes_it(make):
    ours, theirs = _pair(make)
    ids, labels = _batch()
    count = torch.tensor(int((labels[:, 1:] != -100).sum()) + 5)
    with torch.no_grad():
        kwargs = {"input_ids": ids, "labels": labels, "num_items_in_batch": count}
        torch.testing.assert_close(ours(**kwargs).loss, theirs(**kwargs).loss)


@MODELS
def test_training_follows_the_same_curve(make):
    ours, theirs = _pair(make)
    curves = []
    for model in (ours, theirs):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(4):
            ids, labels = _batch(seed=10)  # one batch learnt: the loss must fall
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[1][-1] < curves[1][0]
    torch.testing.assert_close(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=1e-4,
                               atol=1e-5)


def test_a_training_step_peaks_lower():
    bench = pytest.importorskip("benchmarks.harness")
    if not bench._can_reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak resident set size")
    ours, theirs = _pair(_llama)
    ids, labels = _batch(batch=8, length=256)

    def step(model):
        return lambda: model(input_ids=ids, labels=labels).loss.backward()

    peaks = {}
    for name, model in (("pyops", ours), ("transformers", theirs)):
        step(model)()  # parameters' gradients allocated outside the measured step
        peaks[name] = bench.peak_extra_bytes(step(model), "cpu")
    logits = ids.numel() * VOCAB * 4
    assert peaks["pyops"] + logits < peaks["transformers"], peaks


def test_return_dict_false_gives_a_tuple():
    ours, theirs = _pair(_llama)
    ids, labels = _batch()
    out = ours(input_ids=ids, labels=labels, return_dict=False)
    ref = theirs(input_ids=ids, labels=labels, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], ref[0])
    logits = ours(input_ids=ids, labels=labels, return_dict=False, return_logits=True)[1]
    torch.testing.assert_close(logits, ref[1])


def test_a_mixture_of_experts_keeps_its_router_loss():
    # with output_router_logits, the model's loss of labels adds coef * its router's aux_loss
    torch.manual_seed(0)
    theirs = transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        output_router_logits=True, router_aux_loss_coef=0.5)).eval()
    ours = apply(copy.deepcopy(theirs))
    ids, labels = _batch()
    out, ref = ours(input_ids=ids, labels=labels), theirs(input_ids=ids, labels=labels)
    assert ref.aux_loss > 0.1 * ref.loss
    _assert_same_loss_and_gradients(ours, out, theirs, ref)


@pytest.mark.parametrize("name", ["logit_scale", "logits_scaling", "lm_head_multiplier"])
def test_refuses_a_model_whose_logits_are_not_the_head(name):
    # Cohere's logit_scale, Granite's logits_scaling, Falcon-H1's lm_head_multiplier
    model = _llama()
    setattr(model.config, name, 0.5)
    with pytest.raises(NotImplementedError, match=name):
        apply(model)


def test_refuses_a_softcap_only_the_text_config_sets():
    # Gemma 3's multimodal model takes no softcap from its text config; others with one might
    model = _llama()
    text = copy.deepcopy(model.config)
    text.final_logit_softcapping = 30.0
    model.config.get_text_config = lambda *args, **kwargs: text
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        apply(model)
