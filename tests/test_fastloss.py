"""Each exact speed lever gives the plain computation's loss and gradients."""

import pytest
import torch

from tunesmith.fastloss import causal_lm_loss, supports_fast_loss
from tunesmith.modeling import attach_lora, load_model

ATOL = 1e-5  # fp32: summation order differs, nothing else


def batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = [23, 9, 17]
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[r, :n] = 1
        labels[r, n // 2 : n] = ids[r, n // 2 : n]  # second half is the "answer"
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lora_model(path):
    torch.manual_seed(0)
    model = attach_lora(load_model(path), 4, 8, 0.0, ["q_proj", "v_proj", "down_proj"])
    for n, p in model.named_parameters():  # make B non-zero so LoRA gradients flow everywhere
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["tiny_qwen", "tiny_llama"])
@pytest.mark.parametrize("unpadded, label_only", [(True, False), (False, True), (True, True)])
def test_levers_match_plain_loss_and_gradients(request, arch, unpadded, label_only):
    model = lora_model(request.getfixturevalue(arch))
    assert supports_fast_loss(model)
    inputs = batch(model.config.vocab_size)
    n_items = (inputs["labels"] != -100).sum()

    model.zero_grad()
    plain = model(**inputs, num_items_in_batch=n_items).loss  # transformers' own loss
    plain.backward()
    g_plain = grads(model)

    model.zero_grad()
    fast = causal_lm_loss(model, inputs, n_items, unpadded=unpadded, label_logits_only=label_only)
    fast.backward()
    g_fast = grads(model)

    assert fast.item() == pytest.approx(plain.item(), abs=ATOL)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_fast[name], g, atol=ATOL, rtol=1e-4, msg=name)


def test_bf16_autocast_stays_close(tiny_qwen):
    model = lora_model(tiny_qwen)
    inputs = batch(model.config.vocab_size, seed=1)
    plain = model(**inputs).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = causal_lm_loss(model, inputs).item()
    assert fast == pytest.approx(plain, rel=2e-2)  # bf16 matmuls: ~3 significant digits


def test_unsupported_models_fall_back(tiny_qwen):
    model = lora_model(tiny_qwen)
    model.get_base_model().config.final_logit_softcapping = 30.0
    assert not supports_fast_loss(model)
