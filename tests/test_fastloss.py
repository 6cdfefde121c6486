"""Each exact speed lever gives the plain computation's loss and gradients."""

import pytest
import torch

from tunesmith.modeling import attach_lora, load_model
from tunesmith.training.fastloss import causal_lm_loss, supports_fast_loss

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


@pytest.mark.parametrize("arch", ["tiny_qwen", "tiny_llama", "tiny_gemma3"])
@pytest.mark.parametrize("unpadded, label_only", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("multiple", [0, 16])
def test_levers_match_plain_loss_and_gradients(request, arch, unpadded, label_only, multiple):
    model = lora_model(request.getfixturevalue(arch))
    assert supports_fast_loss(model)
    inputs = batch(model.config.vocab_size)
    n_items = (inputs["labels"] != -100).sum()

    model.zero_grad()
    plain = model(**inputs, num_items_in_batch=n_items).loss  # transformers' own loss
    plain.backward()
    g_plain = grads(model)

    model.zero_grad()
    fast = causal_lm_loss(
        model, inputs, n_items, unpadded=unpadded, label_logits_only=label_only, pad_to_multiple_of=multiple
    )
    fast.backward()
    g_fast = grads(model)

    assert fast.item() == pytest.approx(plain.item(), abs=ATOL)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_fast[name], g, atol=ATOL, rtol=1e-4, msg=name)


def test_packed_row_is_padded_by_a_sequence_of_its_own():
    from tunesmith.training.fastloss import _pieces

    inputs = batch(1000)  # sequences of 23, 9 and 17 tokens: 49
    [(ids, mask, positions, targets)] = _pieces(inputs, unpadded=True, pack=True, multiple=16)
    assert ids.shape == positions.shape == targets.shape == (1, 64)
    assert mask is None
    # the filler restarts the positions and has no targets; the real tokens are untouched
    assert positions[0, 49:].tolist() == list(range(15))
    assert (targets[0, 49:] == -100).all()
    [(unfilled, _, _, real_targets)] = _pieces(inputs, unpadded=True, pack=True, multiple=0)
    assert unfilled.shape == (1, 49)
    assert torch.equal(ids[:, :49], unfilled) and torch.equal(targets[:, :49], real_targets)
    # a lone sequence is padded too, with its positions made explicit
    one = {k: v[:1] for k, v in inputs.items()}
    [(ids, _, positions, _)] = _pieces(one, unpadded=True, pack=True, multiple=16)
    assert ids.shape == (1, 32) and positions[0, :23].tolist() == list(range(23))


@pytest.mark.parametrize("multiple", [0, 1, 4, 16])
def test_label_cross_entropy_matches_plain_in_padded_chunks(monkeypatch, multiple):
    import tunesmith.training.fastloss as fl

    monkeypatch.setattr(fl, "CE_CHUNK_ELEMENTS", 5 * 50)  # 5 rows of a 50-word vocabulary a chunk
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(50, 8, generator=g)
    targets = torch.randint(0, 50, (13,), generator=g)
    hidden = torch.randn(13, 8, generator=g, requires_grad=True)
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (want,) = torch.autograd.grad(plain, hidden)
    fused = fl.label_cross_entropy(hidden, weight, targets, multiple)
    (got,) = torch.autograd.grad(fused, hidden)
    assert fused.item() == pytest.approx(plain.item(), abs=ATOL)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


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


@pytest.mark.parametrize("arch", ["tiny_qwen", "tiny_llama", "tiny_gemma3"])
def test_packed_sequences_stay_independent(request, arch, monkeypatch):
    """Packing a micro-batch into one row gives each sequence's own loss and gradients."""
    import tunesmith.training.fastloss as fl

    model = lora_model(request.getfixturevalue(arch))
    assert fl.supports_packing(model)
    inputs = batch(model.config.vocab_size, seed=2)
    model.zero_grad()
    packed = causal_lm_loss(model, inputs)
    packed.backward()
    g_packed = grads(model)

    monkeypatch.setattr(fl, "PACKABLE", frozenset())  # one sequence at a time
    assert not fl.supports_packing(model)
    model.zero_grad()
    rows = causal_lm_loss(model, inputs)
    rows.backward()
    assert packed.item() == pytest.approx(rows.item(), abs=ATOL)
    for name, g in grads(model).items():
        torch.testing.assert_close(g_packed[name], g, atol=ATOL, rtol=1e-4, msg=name)


def test_frozen_bf16_weights_give_autocast_the_same_operands(tiny_qwen):
    from tunesmith.training.levers import restore_fp32, store_frozen_in_bf16

    ref, model = lora_model(tiny_qwen), lora_model(tiny_qwen)
    names = store_frozen_in_bf16(model)
    base = model.get_base_model()
    layers = model.config.num_hidden_layers
    # every frozen linear layer: 7 per decoder layer (3 of them under a LoRA adapter), the LM head
    assert len(names) == 7 * layers + 1 and "lm_head" in names
    assert sum(n.endswith(".base_layer") for n in names) == 3 * layers
    assert base.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    assert base.model.layers[0].self_attn.q_proj.base_layer.bias.dtype == torch.bfloat16  # Qwen2: q bias
    assert base.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    assert base.model.embed_tokens.weight.dtype == torch.float32
    assert base.model.norm.weight.dtype == torch.float32
    inputs = batch(model.config.vocab_size, seed=3)
    out = []
    for m in (ref, model):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = causal_lm_loss(m, inputs)
        loss.backward()
        out.append((loss.item(), grads(m)))
    assert out[1][0] == pytest.approx(out[0][0], abs=1e-6)
    for name, g in out[0][1].items():
        torch.testing.assert_close(out[1][1][name], g, atol=1e-6, rtol=1e-5, msg=name)

    # Before a merge the fp32 originals come back, bit for bit.
    restore_fp32(model, names, ref.get_base_model())
    for name, p in model.get_base_model().named_parameters():
        assert p.dtype == torch.float32, name
    torch.testing.assert_close(
        base.model.layers[1].mlp.down_proj.base_layer.weight,
        ref.get_base_model().model.layers[1].mlp.down_proj.base_layer.weight,
        atol=0,
        rtol=0,
    )


def test_tied_lm_head_stays_fp32(tiny_llama):
    from tunesmith.training.levers import store_frozen_in_bf16

    model = lora_model(tiny_llama)
    base = model.get_base_model()
    base.lm_head.weight = base.model.embed_tokens.weight  # tied, as in SmolLM2 and Qwen2.5-0.5B
    store_frozen_in_bf16(model)
    assert base.lm_head.weight is base.model.embed_tokens.weight
    assert base.lm_head.weight.dtype == torch.float32


def test_fast_dropout_has_dropouts_distribution_and_gradient(tiny_qwen):
    from tunesmith.training.levers import FastDropout, use_fast_dropout

    torch.manual_seed(0)
    d = FastDropout(0.1)
    x = torch.full((400, 500), 2.0, requires_grad=True)
    y = d(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.005)  # 200k draws: sd 0.0007
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.9))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)
    d.eval()
    assert d(x) is x
    assert (FastDropout(1.0)(x) == 0).all()

    model = attach_lora(load_model(tiny_qwen), 4, 8, 0.1, ["q_proj", "v_proj", "down_proj"])
    layers = model.get_base_model().config.num_hidden_layers
    assert use_fast_dropout(model) == 3 * layers
    down = model.get_base_model().model.layers[0].mlp.down_proj
    assert isinstance(down.lora_dropout["default"], FastDropout)
    assert use_fast_dropout(model) == 0  # already swapped


def test_training_and_evaluation_run_under_autocast_in_bf16(tmp_path, tiny_qwen, monkeypatch):
    """The fast path calls submodules directly, past accelerate's autocast-wrapped forward: it must
    enter autocast itself, for training steps and evaluation alike."""
    import tunesmith.training.lm as train_mod
    from test_train import make_cfg

    seen = []
    apply = train_mod._apply_levers

    def spy(cfg, model, dtype):
        layer = model.get_base_model().model.layers[0]
        layer.register_forward_pre_hook(lambda m, a: seen.append(torch.is_autocast_enabled("cpu")))
        return apply(cfg, model, dtype)

    monkeypatch.setattr(train_mod, "_apply_levers", spy)
    cfg = make_cfg(tmp_path, tiny_qwen, "train.dtype=bfloat16", "train.max_steps=2", "train.device=cpu")
    run = train_mod.train_lm(cfg)
    assert (run / "tunesmith.json").is_file()
    assert len(seen) >= 4 and all(seen), seen  # evaluation before and after, and the two steps
