"""model.py against independent references: float64 math written out here, Hugging Face's GPT-2,
and hand-computed counts."""

import math

import pytest
import torch
from torch.nn import functional as F

from model import GPT, GPTConfig, full_logits_loss
from nanogpt_plus.huggingface import from_pretrained
from nanogpt_plus.plan import peak_flops


def tiny_config(**kw):
    base = dict(block_size=16, vocab_size=97, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
    base.update(kw)
    return GPTConfig(**base)


def reference_attention(x, w_attn, b_attn, w_proj, b_proj, n_head):
    """Causal self-attention in float64, one query position at a time, no masking tricks."""
    B, T, C = x.shape
    hs = C // n_head
    qkv = x @ w_attn.T + (b_attn if b_attn is not None else 0)
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    out = torch.zeros_like(x)
    for h in range(n_head):
        sl = slice(h * hs, (h + 1) * hs)
        for t in range(T):
            scores = (q[:, t, sl].unsqueeze(1) * k[:, : t + 1, sl]).sum(-1) / math.sqrt(hs)  # (B, t+1)
            weights = torch.softmax(scores, dim=-1)
            out[:, t, sl] = (weights.unsqueeze(-1) * v[:, : t + 1, sl]).sum(1)
    return out @ w_proj.T + (b_proj if b_proj is not None else 0)


def rel_error(ours, ref):
    return ((ours.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("kind", ["manual", "sdpa"])
@pytest.mark.parametrize("bias", [True, False])
def test_attention_paths_match_float64_reference(kind, bias):
    torch.manual_seed(0)
    model = GPT(tiny_config(bias=bias))
    model.set_attention(kind)
    attn = model.transformer.h[0].attn
    for p in attn.parameters():  # non-trivial weights, so errors cannot hide in near-zero outputs
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 11, 32, requires_grad=True)
    y = attn(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)

    params64 = [p.detach().double().requires_grad_() for p in attn.parameters()]
    x64 = x.detach().double().requires_grad_()
    w_attn, b_attn, w_proj, b_proj = params64 if bias else (params64[0], None, params64[1], None)
    y64 = reference_attention(x64, w_attn, b_attn, w_proj, b_proj, n_head=4)
    y64.backward(grad_out.double())

    assert rel_error(y, y64) < 1e-5
    assert rel_error(x.grad, x64.grad) < 1e-5
    for p, p64 in zip(attn.parameters(), params64):
        assert rel_error(p.grad, p64.grad) < 1e-5


def test_attention_paths_agree_on_whole_model_forward_and_backward():
    torch.manual_seed(1)
    model = GPT(tiny_config())
    idx = torch.randint(0, 97, (2, 16))
    grads = {}
    losses = {}
    for kind in ("manual", "sdpa"):
        model.zero_grad()
        model.set_attention(kind)
        _, loss = model(idx, idx)
        loss.backward()
        losses[kind] = loss.item()
        grads[kind] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert losses["manual"] == pytest.approx(losses["sdpa"], abs=1e-6)
    for n in grads["manual"]:
        torch.testing.assert_close(grads["manual"][n], grads["sdpa"][n], atol=1e-6, rtol=1e-4)


def test_manual_attention_never_calls_sdpa(monkeypatch):
    model = GPT(tiny_config())
    model.set_attention("manual")
    idx = torch.randint(0, 97, (2, 16))
    expected, _ = model(idx, idx)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", None)  # any call would fail
    got, _ = model(idx, idx)
    assert torch.equal(got, expected)
    model.set_attention("sdpa")
    with pytest.raises(TypeError):
        model(idx, idx)


@pytest.mark.parametrize("kind", ["manual", "sdpa"])
def test_changing_a_future_token_never_changes_earlier_logits(kind):
    torch.manual_seed(2)
    model = GPT(tiny_config())
    model.set_attention(kind)
    idx = torch.randint(0, 97, (1, 16))
    logits, _ = model(idx, idx)  # with targets: logits for every position
    for t in (3, 9, 15):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % 97
        logits2, _ = model(changed, changed)
        assert torch.equal(logits[:, :t], logits2[:, :t])
        assert not torch.allclose(logits[:, t], logits2[:, t])


def test_initial_loss_is_close_to_uniform():
    torch.manual_seed(3)
    model = GPT(tiny_config(vocab_size=1000, n_layer=4))
    idx = torch.randint(0, 1000, (8, 16))
    targets = torch.randint(0, 1000, (8, 16))  # not idx: tied weights favour repeating the input
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(1000)) < 0.05


def test_loss_matches_cross_entropy_and_honours_ignore_index():
    torch.manual_seed(4)
    model = GPT(tiny_config())
    idx = torch.randint(0, 97, (2, 8))
    targets = idx.clone()
    targets[:, :3] = -1
    logits, loss = model(idx, targets)
    logp = torch.log_softmax(logits.double(), dim=-1)
    picked = logp[:, 3:].gather(-1, targets[:, 3:, None]).squeeze(-1)
    assert loss.item() == pytest.approx(-picked.mean().item(), abs=1e-5)


def test_inference_forward_returns_last_position_only():
    torch.manual_seed(5)
    model = GPT(tiny_config())
    idx = torch.randint(0, 97, (3, 10))
    full, _ = model(idx, idx)
    last, loss = model(idx)
    assert loss is None
    assert last.shape == (3, 1, 97)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_sequence_longer_than_block_size_is_a_clear_error():
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match="block_size is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_weight_tying_shares_one_tensor():
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(0, 97, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    # one tensor, one gradient: it holds both the embedding's and the head's contribution
    assert model.transformer.wte.weight.grad is model.lm_head.weight.grad
    assert sum(1 for _ in model.parameters()) == len({id(p) for p in model.parameters()})


def test_init_standard_deviations_and_zero_biases():
    torch.manual_seed(6)
    n_layer = 8
    model = GPT(GPTConfig(block_size=256, vocab_size=2048, n_layer=n_layer, n_head=4, n_embd=256))
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif "ln" in name:
            expected = torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)
            assert torch.equal(p, expected), name
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    assert model.transformer.h[0].attn.c_attn.weight.mean().abs() < 1e-3


def test_parameter_names_are_nanogpts():
    names = set(GPT(tiny_config(n_layer=1)).state_dict())
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    expected |= {"lm_head.weight"}
    for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
        expected |= {f"transformer.h.0.{part}.weight", f"transformer.h.0.{part}.bias"}
    assert names == expected


def test_gpt2_124m_has_123_65m_non_embedding_parameters():
    V, T, L, C = 50257, 1024, 12, 768
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=12, n_embd=C, bias=True))
    per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    by_hand = V * C + L * per_layer + 2 * C  # token embedding (tied with lm_head), blocks, ln_f
    assert model.get_num_params() == by_hand == 123_653_376
    assert model.get_num_params(non_embedding=False) == by_hand + T * C


def test_config_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)


def test_crop_block_size_keeps_logits_and_shrinks_context():
    torch.manual_seed(7)
    model = GPT(tiny_config())
    idx = torch.randint(0, 97, (2, 8))
    before, _ = model(idx, idx)
    wpe_head = model.transformer.wpe.weight[:8].detach().clone()
    model.crop_block_size(8)
    after, _ = model(idx, idx)
    assert model.config.block_size == 8
    assert model.transformer.wpe.weight.shape == (8, 32)
    assert torch.equal(model.transformer.wpe.weight.detach(), wpe_head)
    torch.testing.assert_close(before, after)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="between 1 and"):
        model.crop_block_size(9)


def test_optimizer_decays_matrices_only():
    model = GPT(tiny_config())
    opt = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), device_type="cpu", fused=True)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    named = dict(model.named_parameters())  # the tied weight appears once, as wte
    want_decay = {id(p) for p in named.values() if p.dim() >= 2}
    want_plain = {id(p) for n, p in named.items() if n.endswith("bias") or "ln" in n}
    assert {id(p) for p in decay["params"]} == want_decay
    assert {id(p) for p in no_decay["params"]} == want_plain
    assert len(want_decay) + len(want_plain) == len(named)
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["betas"] == (0.9, 0.95)
    assert opt.defaults.get("fused") is True  # as told (torch >= 2.4 has the fused kernel on the CPU too)
    # not told: torch's default, whatever the device type (the plan tells the scripts: test_plan.py)
    assert model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), "cuda").defaults.get("fused") is None


def test_fused_adamw_makes_the_same_update_as_the_per_tensor_one():
    """configure_optimizers' fused AdamW against torch's reference (for-loop) AdamW: the same
    weights after several steps with weight decay, on the same gradients. No biases: the key
    bias's gradient is zero up to rounding noise, which Adam's normalisation blows up to full steps."""
    torch.manual_seed(0)
    models = [GPT(tiny_config(bias=False)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = models[0].configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu", fused=True)
    ref_groups = [
        {"params": [p for p in models[1].parameters() if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in models[1].parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    reference = torch.optim.AdamW(ref_groups, lr=1e-2, betas=(0.9, 0.95), foreach=False)
    idx = torch.randint(0, 64, (4, 16))
    for _ in range(5):
        for model, opt in zip(models, (fused, reference)):
            _, loss = model(idx, idx)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mfu_uses_the_palm_flop_count():
    cfg = tiny_config()
    model = GPT(cfg)
    N = model.get_num_params()
    L, H, Q, T = 2, 4, 8, 16
    flops_per_iter = (6 * N + 12 * L * H * Q * T) * T * 5  # 5 sequences of T tokens
    mfu = model.estimate_mfu(fwdbwd_per_iter=5, dt=0.25, peak_flops=1e9)
    assert mfu == pytest.approx(flops_per_iter / 0.25 / 1e9)
    # no reference peak on the CPU: no MFU figure is invented for it
    assert peak_flops("cpu")[0] is None


@pytest.mark.parametrize(
    "name,tflops",
    [("NVIDIA L4", 121), ("NVIDIA L40", 181), ("NVIDIA L40S", 362), ("NVIDIA H100 80GB HBM3", 989), ("Mystery", None)],
)
def test_peak_flops_by_device_name_takes_the_card_not_a_prefix_of_it(monkeypatch, name, tflops):
    """The vendors' dense bf16 figures; one card's name inside another's (L4 in L40) must not match."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak, _ = peak_flops("cuda")
    assert (peak and round(peak / 1e12)) == tflops


def make_hf_model(tmp_path, **kw):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(8)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=24, vocab_size=101, bos_token_id=0, eos_token_id=0, **kw
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("activation,tol", [("gelu_new", 1e-5), ("gelu", 1e-6)])
def test_from_pretrained_local_dir_matches_hugging_face_logits(tmp_path, activation, tol):
    hf = make_hf_model(tmp_path, activation_function=activation)
    model = from_pretrained(str(tmp_path)).eval()
    assert model.config.block_size == 24 and model.config.vocab_size == 101 and model.config.bias
    idx = torch.randint(0, 101, (2, 24))
    with torch.no_grad():
        ref = hf(idx).logits
        ours, _ = model(idx, idx)
    assert (ref - ours).abs().max().item() < tol
    # weights were transposed from Conv1D layout, not merely reshaped
    w_hf = hf.transformer.h[0].attn.c_attn.weight
    torch.testing.assert_close(model.transformer.h[0].attn.c_attn.weight, w_hf.t())


def test_from_pretrained_refuses_an_untied_head(tmp_path):
    """A Hugging Face GPT-2 whose lm_head is its own matrix cannot become a GPT (which ties it to the
    token embedding): a ValueError, not one of the two matrices silently lost."""
    hf = make_hf_model(tmp_path, tie_word_embeddings=False)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    with pytest.raises(ValueError, match="output head is apart from its token embedding"):
        from_pretrained(str(tmp_path))


def test_from_pretrained_overrides_dropout_only(tmp_path):
    make_hf_model(tmp_path)
    model = from_pretrained(str(tmp_path), dict(dropout=0.1))
    assert model.config.dropout == 0.1
    with pytest.raises(ValueError, match="only 'dropout'"):
        from_pretrained(str(tmp_path), dict(n_layer=3))
    with pytest.raises(ValueError, match="unknown pretrained model"):
        from_pretrained("gpt3")


# ---------------------------------------------------------------------------- the chunked head and loss


@pytest.mark.parametrize("chunk", [7, 64, 100000])
def test_chunked_loss_and_gradients_equal_cross_entropy_in_float64(monkeypatch, chunk):
    """linear_cross_entropy against F.cross_entropy(x @ w.T) in float64: the loss, and the gradients
    of x and w, with ignored targets (-1), chunks that do not divide the tokens, and one chunk."""
    from nanogpt_plus import chunked_loss

    monkeypatch.setattr(chunked_loss, "CHUNK_TOKENS", chunk)
    torch.manual_seed(9)
    x = torch.randn(150, 24, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(301, 24, dtype=torch.float64) * 0.3).requires_grad_()
    targets = torch.randint(0, 301, (150,))
    targets[::4] = -1
    ours = chunked_loss.linear_cross_entropy(x, w, targets)
    grad_x, grad_w = torch.autograd.grad(2.5 * ours, (x, w))
    ref = F.cross_entropy(x @ w.T, targets, ignore_index=-1)
    ref_x, ref_w = torch.autograd.grad(2.5 * ref, (x, w))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-13)
    torch.testing.assert_close(grad_x, ref_x, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-12, atol=1e-15)
    with torch.no_grad():  # evaluation: the same loss, no gradient work
        assert chunked_loss.linear_cross_entropy(x, w, targets).item() == pytest.approx(ref.item(), rel=1e-13)


def test_chunked_loss_under_bfloat16_autocast_stays_within_its_rounding_of_float64(monkeypatch):
    """CUDA's training dtype, on the CPU: the logits and their gradient in bfloat16, the sums in
    float32, over several chunks: the loss and both gradients within bfloat16's rounding of float64."""
    from nanogpt_plus import chunked_loss

    monkeypatch.setattr(chunked_loss, "CHUNK_TOKENS", 64)
    torch.manual_seed(11)
    x = torch.randn(200, 32, requires_grad=True)
    w = (torch.randn(301, 32) * 0.3).requires_grad_()
    targets = torch.randint(0, 301, (200,))
    targets[::5] = -1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = chunked_loss.linear_cross_entropy(x, w, targets)
    got = torch.autograd.grad(ours, (x, w))
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.cross_entropy(x64 @ w64.T, targets, ignore_index=-1)
    want = torch.autograd.grad(ref, (x64, w64))
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(ref.item(), rel=1e-2)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and ((g.double() - r).norm() / r.norm()).item() < 2e-2


def test_chunked_loss_with_every_target_ignored_is_nan_with_zero_gradients_as_cross_entropy():
    from nanogpt_plus import chunked_loss

    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.full((6,), -1)
    ours = chunked_loss.linear_cross_entropy(x, w, targets)
    ref = F.cross_entropy(x @ w.T, targets, ignore_index=-1)
    assert math.isnan(ours.item()) and math.isnan(ref.item())
    for got, want in zip(torch.autograd.grad(ours, (x, w)), torch.autograd.grad(ref, (x, w)), strict=True):
        assert torch.equal(got, want) and not got.any()


def test_chunked_loss_under_no_grad_does_only_the_logits_matmuls():
    """Evaluation (torch.no_grad) makes the logits and nothing else: a third of training's FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from nanogpt_plus import chunked_loss

    x = torch.randn(64, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (64,))
    for grad_enabled, flops in ((True, 3 * 2 * 64 * 16 * 50), (False, 2 * 64 * 16 * 50)):
        with torch.set_grad_enabled(grad_enabled), FlopCounterMode(display=False) as counter:
            loss = chunked_loss.linear_cross_entropy(x, w, targets)
        assert counter.get_total_flops() == flops
        assert loss.item() == pytest.approx(F.cross_entropy(x @ w.T, targets).item(), rel=1e-5)


def test_chunked_head_loss_trains_the_model_as_the_full_one():
    """GPT.forward with chunked_loss.head_loss installed against its own full logits, in float64: the
    same loss, no logits, and the same gradient for every parameter, the tied embedding and head included."""
    from nanogpt_plus import chunked_loss

    torch.manual_seed(10)
    full = GPT(tiny_config()).double()
    chunked = GPT(tiny_config()).double()
    chunked.head_loss = chunked_loss.head_loss
    chunked.load_state_dict(full.state_dict())
    idx = torch.randint(0, 97, (3, 16))
    targets = torch.randint(0, 97, (3, 16))
    targets[:, :2] = -1
    logits, loss_full = full(idx, targets)
    none, loss_chunked = chunked(idx, targets)
    assert logits.shape == (3, 16, 97) and none is None
    assert loss_chunked.item() == pytest.approx(loss_full.item(), rel=1e-12)
    loss_full.backward()
    loss_chunked.backward()
    for (name, a), b in zip(full.named_parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-14, msg=name)
    assert GPT(tiny_config()).head_loss is full_logits_loss  # nanoGPT's: the logits come back
    assert GPT(tiny_config(vocab_size=8192))(idx, idx)[0] is not None
