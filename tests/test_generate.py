"""engine.Sampler (sample.py's sampling: a KV cache, CUDA graphs) against nanoGPT's loop, GPT.generate,
and against itself recomputing every step, on CPU in float32 (and on a GPU where there is one).

The cached path must pick the same tokens as recomputing the whole (cropped) context every
step, including once the sequence has grown past block_size, for both attention paths.
"""

import pytest
import torch
from torch.nn import functional as F

from model import GPT, GPTConfig
from nanogpt_plus import engine
from nanogpt_plus.plan import make_plan

VOCAB = 50
BLOCK = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one CPU thread is fastest, and immune to other busy processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed=0, std=0.3, bias=True, block_size=BLOCK, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32):
    """A small random model. Matrices drawn wider than GPT-2's init (std 0.02) give peaked,
    well separated logits, so greedy choices are far from ties and generations vary."""
    torch.manual_seed(seed)
    config = GPTConfig(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        block_size=block_size,
        vocab_size=vocab_size,
        bias=bias,
        dropout=0.0,
    )
    model = GPT(config)
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, std)
    return model.eval()


def sample(model, idx, max_new_tokens, temperature=1.0, top_k=None, **options):
    """What engine.Sampler draws after idx (B, T), as sample.py draws it; options: use_cache,
    cuda_graph (the plan's decision: sampling on CUDA), generator."""
    return engine.Sampler(model, *idx.shape, max_new_tokens, temperature, top_k, **options)(idx)


def prompt(batch, length, seed=1, vocab_size=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g)


def greedy_by_hand(model, idx, max_new_tokens):
    """The classic loop written out independently: crop, full forward, argmax, append."""
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -block_size:]
        logits = model(idx_cond)[0][:, -1, :]
        idx = torch.cat((idx, logits.argmax(dim=-1, keepdim=True)), dim=1)
    return idx


# (batch, prompt length, new tokens): short runs, runs that pass block_size (16), a prompt that
# fills the block exactly, one longer than the block, and a run that ends exactly at the block
CASES = [(1, 1, 10), (1, 5, 40), (3, 5, 40), (2, 16, 6), (2, 23, 9), (1, 15, 2), (2, 3, 13), (4, 1, 33)]


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize("batch,length,new", CASES)
def test_greedy_cached_equals_recompute(attention, batch, length, new):
    model = make_model()
    model.set_attention(attention)
    idx = prompt(batch, length)
    cached = sample(model, idx, new, top_k=1)
    recomputed = sample(model, idx, new, top_k=1, use_cache=False)
    assert cached.shape == (batch, length + new)
    assert torch.equal(cached[:, :length], idx)
    assert torch.equal(cached, recomputed)
    assert torch.equal(sample(model, idx, new, temperature=0.0), recomputed)
    assert torch.equal(sample(model, idx, new, temperature=0.0, use_cache=False), recomputed)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_cache", [True, False])
def test_top_k_1_is_argmax_decoding(seed, use_cache):
    model = make_model(seed=seed, bias=bool(seed % 2))
    idx = prompt(2, 4, seed=seed + 10)
    expected = greedy_by_hand(model, idx, 30)
    assert torch.equal(model.generate(idx, 30, top_k=1), expected)  # nanoGPT's loop
    assert torch.equal(model.generate(idx, 30, temperature=0), expected)
    assert torch.equal(sample(model, idx, 30, top_k=1, use_cache=use_cache), expected)
    assert torch.equal(sample(model, idx, 30, temperature=0, use_cache=use_cache), expected)
    assert len(set(expected[0, 4:].tolist())) > 3  # not a degenerate repeat of one token


def test_greedy_with_gpt2_init():
    """The same holds for GPT-2's own small init, where logits are nearly flat."""
    model = make_model(std=None, n_layer=3, n_head=4, n_embd=64, vocab_size=97)
    idx = prompt(2, 3, vocab_size=97)
    assert torch.equal(sample(model, idx, 40, top_k=1), greedy_by_hand(model, idx, 40))


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_decode_attends_over_the_smallest_power_of_two_span_and_still_equals_recompute(attention, monkeypatch):
    """With a block of 256, a decode step reads the cache only up to a span: the smallest power of
    two that holds every position so far, at least MIN_SPAN (64 here). Spans 64, 128 and 256 all
    run, then the window; the tokens are those of the recompute loop."""
    monkeypatch.setattr(engine, "MIN_SPAN", 64)
    model = make_model(seed=6, block_size=256, n_embd=16)
    model.set_attention(attention)
    idx = prompt(2, 3, seed=7)
    seen = []  # (span, newest position) of each forward through the cache
    begin = engine.KVCache.begin
    monkeypatch.setattr(
        engine.KVCache, "begin", lambda self, pos: (seen.append((self.span, int(pos[-1]))), begin(self, pos))[1]
    )
    cached = sample(model, idx, 280, top_k=1)
    assert torch.equal(cached, greedy_by_hand(model, idx, 280))
    assert seen[0] == (256, 2)  # the prompt, through the whole block
    by_hand = [(64 if p < 64 else 128 if p < 128 else 256, p) for p in range(3, 256)]
    assert seen[1:] == by_hand


class Recorder:
    """Stands in for sample_next: keeps each step's logits and feeds a fixed token sequence,
    so both paths see the same context whatever their logits."""

    def __init__(self, forced):
        self.forced = forced  # (B, steps)
        self.logits = []

    def __call__(self, logits, temperature=1.0, top_k=None, generator=None):
        self.logits.append(logits.clone())
        return self.forced[:, len(self.logits) - 1 : len(self.logits)]


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize("batch,length,new", [(1, 1, 40), (3, 7, 30), (2, 20, 5)])
def test_cached_logits_equal_recompute_logits_every_step(attention, batch, length, new, monkeypatch):
    model = make_model(seed=3)
    model.set_attention(attention)
    idx = prompt(batch, length, seed=4)
    forced = prompt(batch, new, seed=5)
    per_path = {}
    paths = {
        "cached": lambda: sample(model, idx, new),
        "recompute": lambda: sample(model, idx, new, use_cache=False),
    }
    for name, run in paths.items():
        recorder = Recorder(forced)
        monkeypatch.setattr(engine, "sample_next", recorder)
        assert torch.equal(run(), torch.cat((idx, forced), dim=1))
        per_path[name] = torch.stack(recorder.logits)  # (new, B, V)
    assert per_path["cached"].shape == (new, batch, VOCAB)
    torch.testing.assert_close(per_path["cached"], per_path["recompute"], rtol=1e-5, atol=1e-5)


def edited_forwards(monkeypatch, where, device="cpu"):
    """Edit Block.forward or GPT.forward as a user would (here: a fixed bias on the residual stream
    or the logits), for every instance at once."""
    from model import Block

    bias = torch.randn(VOCAB if where == "GPT" else 32, generator=torch.Generator().manual_seed(11)).to(device)
    if where == "Block":
        original = Block.forward
        monkeypatch.setattr(Block, "forward", lambda self, x, cache=None: original(self, x, cache) + bias)
    else:
        original = GPT.forward

        def forward(self, idx, targets=None, cache=None):
            logits, loss = original(self, idx, targets, cache)
            return logits + 3 * bias, loss

        monkeypatch.setattr(GPT, "forward", forward)


@pytest.mark.parametrize("where", ["Block", "GPT"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_an_edited_forward_changes_what_every_sampling_path_draws(monkeypatch, where, use_cache):
    """Prefill, the cached decode step, the growing context and the sliding window all run the model's
    own forward: edit it, and every sampled token follows the edit exactly as nanoGPT's loop
    (GPT.generate: crop, forward, scale, top-k, multinomial) draws it from the same seed."""
    model = make_model(seed=12, std=0.1)
    idx = prompt(2, 3, seed=13)
    draw = lambda: (torch.manual_seed(5), sample(model, idx, 30, temperature=0.9, top_k=20, use_cache=use_cache))[1]  # noqa: E731
    nanogpt = lambda: (torch.manual_seed(5), model.generate(idx, 30, temperature=0.9, top_k=20))[1]  # noqa: E731
    before = draw()
    assert torch.equal(before, nanogpt())
    edited_forwards(monkeypatch, where)
    after = draw()
    assert torch.equal(after, nanogpt())  # past block_size (16) too
    assert not torch.equal(after[:, 3:5], before[:, 3:5])  # from the prefill's token on
    assert not torch.equal(after[:, 20:], before[:, 20:])  # and in the sliding window


def test_cached_path_feeds_one_position_per_token():
    """Prefill, then one token per step until the block is full, then the classic crop."""
    model = make_model()
    lengths = []
    model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].size(1)))
    sample(model, prompt(1, 5), 20)
    assert lengths == [5] + [1] * (BLOCK - 5) + [BLOCK] * (20 - (BLOCK - 5) - 1)
    lengths.clear()
    sample(model, prompt(1, 5), 20, use_cache=False)
    assert lengths == [min(t, BLOCK) for t in range(5, 25)]


@pytest.mark.parametrize("top_k", [None, 1, 5, 200])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_sampled_tokens_equal_with_fixed_generator(top_k, temperature):
    model = make_model(seed=6, std=0.1)
    idx = prompt(3, 2, seed=7)
    runs = []
    for use_cache in (True, False, True):
        g = torch.Generator().manual_seed(1234)
        runs.append(sample(model, idx, 40, temperature=temperature, top_k=top_k, use_cache=use_cache, generator=g))
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0], runs[2])
    if top_k != 1:
        assert not torch.equal(runs[0], greedy_by_hand(model, idx, 40))  # it really sampled


def test_sampled_tokens_equal_with_global_seed():
    model = make_model(seed=8, std=0.1)
    idx = prompt(1, 1)
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(1337)
        runs.append(sample(model, idx, 50, temperature=0.8, top_k=20, use_cache=use_cache))
    torch.manual_seed(1337)
    runs.append(model.generate(idx, 50, temperature=0.8, top_k=20))  # nanoGPT's own loop
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("new", [8, 30])  # within the KV cache's block, and past it (the sliding window)
def test_a_reused_sampler_draws_as_fresh_generate_calls(new):
    """One Sampler called again and again (its buffers and cache reused) draws what as many
    generate() calls draw from the same global seed: nanoGPT's samples, one after another."""
    model = make_model(seed=8, std=0.1)
    idx = prompt(2, 3, seed=9)
    torch.manual_seed(5)
    fresh = [model.generate(idx, new, temperature=0.9, top_k=10) for _ in range(3)]
    torch.manual_seed(5)
    sampler = engine.Sampler(model, 2, 3, new, temperature=0.9, top_k=10)
    reused = [sampler(idx) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(fresh, reused, strict=True))
    assert not torch.equal(reused[0], reused[1])  # each call draws anew


def test_a_reused_sampler_starts_afresh_for_each_prompt():
    model = make_model(seed=3)
    sampler = engine.Sampler(model, 2, 4, 30, temperature=0)
    for seed in (1, 2, 3):
        idx = prompt(2, 4, seed=seed)
        assert torch.equal(sampler(idx), greedy_by_hand(model, idx, 30))
    with pytest.raises(ValueError, match=r"prompts of shape \(2, 4\), not \(1, 4\)"):
        sampler(idx[:1])


@pytest.mark.parametrize("top_k", [None, 1, 3, 10, 64, 1000])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
def test_sample_next_matches_hand_computed_distribution(top_k, temperature):
    """Scale by 1/temperature, keep logits >= the k-th largest, softmax, multinomial."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 64, generator=g) * 3
    scaled = logits / temperature
    if top_k is not None:
        kth = scaled.sort(dim=-1, descending=True).values[:, min(top_k, 64) - 1 : min(top_k, 64)]
        scaled = torch.where(scaled >= kth, scaled, torch.full_like(scaled, float("-inf")))
    probs = F.softmax(scaled, dim=-1)
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(9))
    got = engine.sample_next(logits, temperature, top_k, generator=torch.Generator().manual_seed(9))
    assert got.shape == (500, 1) and got.dtype == torch.long
    assert torch.equal(got, expected)
    if top_k is not None:  # every draw lies in its row's top k
        top = logits.topk(min(top_k, 64), dim=-1).indices
        assert (top == got).any(dim=-1).all()


def test_sample_next_draws_as_torch_multinomial():
    """sample_next writes out multinomial's one-draw algorithm: the same tokens from the same seed."""
    for vocab in (65, 50304):
        logits = torch.randn(32, vocab, generator=torch.Generator().manual_seed(vocab)) * 2
        probs = F.softmax(logits, dim=-1)
        expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3))
        assert torch.equal(engine.sample_next(logits, generator=torch.Generator().manual_seed(3)), expected)


@pytest.mark.parametrize("temperature, scale", [(1e-36, 1e3), (1e-40, 1.0), (1e-300, 1.0)])
def test_a_temperature_too_small_for_the_logits_is_greedy(temperature, scale):
    """logits / temperature overflows: the limit is the argmax (not token 0, which NaN probabilities gave). 1e-36
    divides logits of 1e3 into float32's overflow; the others are below the float's smallest normal number."""
    logits = torch.randn(7, VOCAB, generator=torch.Generator().manual_seed(1)) * scale
    logits[:, 0] = -5.0 * scale  # (token 0 is never the best)
    assert (temperature >= torch.finfo(logits.dtype).tiny) == (temperature == 1e-36)
    for top_k in (None, 5):
        got = engine.sample_next(logits, temperature, top_k, generator=torch.Generator().manual_seed(2))
        assert torch.equal(got, logits.argmax(dim=-1, keepdim=True))


def test_temperature_zero_is_argmax():
    logits = torch.randn(7, VOCAB)
    assert torch.equal(engine.sample_next(logits, temperature=0), logits.argmax(dim=-1, keepdim=True))
    assert torch.equal(engine.sample_next(logits, temperature=0, top_k=5), logits.argmax(dim=-1, keepdim=True))


@pytest.mark.parametrize("use_cache", [True, False])
def test_an_int32_prompt_samples_as_an_int64_one(use_cache):
    """Classic nanoGPT's torch.cat promotes an int32 prompt to int64 tokens; so does the Sampler."""
    model = make_model()
    idx = torch.randint(0, VOCAB, (2, 5))
    torch.manual_seed(3)
    want = model.generate(idx.int(), 12)
    torch.manual_seed(3)
    got = sample(model, idx.int(), 12, use_cache=use_cache)
    assert want.dtype == got.dtype == torch.long and torch.equal(got, want)


@pytest.mark.parametrize("use_cache", [True, False])
def test_zero_new_tokens_returns_the_input(use_cache):
    model = make_model()
    idx = prompt(2, 5)
    out = sample(model, idx, 0, use_cache=use_cache)
    assert torch.equal(out, idx) and torch.equal(model.generate(idx, 0), idx)


def test_cuda_graph_needs_cuda():
    model = make_model()
    with pytest.raises(ValueError, match="cuda_graph=True"):
        sample(model, prompt(1, 3), 5, cuda_graph=True)


def test_bad_arguments_raise():
    model = make_model()
    idx = prompt(1, 3)
    with pytest.raises(ValueError, match="top_k"):
        sample(model, idx, 5, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(model, idx, -1)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, idx, 5, temperature=-0.5)
    with pytest.raises(ValueError, match="at least one token"):
        sample(model, idx[:, :0], 5)


def test_bf16_autocast_on_cpu(monkeypatch):
    """Under autocast the cache takes the autocast dtype; logits stay close to float32."""
    model = make_model(seed=2, std=0.1)
    idx = prompt(2, 3)
    forced = prompt(2, 20, seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = engine.kv_cache(model, 2)
        assert cache.k[0].dtype == torch.bfloat16 and cache.k[0].shape == (2, 2, BLOCK, 16)
        recorder = Recorder(forced)
        monkeypatch.setattr(engine, "sample_next", recorder)
        sample(model, idx, 20)
    recorder32 = Recorder(forced)
    monkeypatch.setattr(engine, "sample_next", recorder32)
    sample(model, idx, 20)
    low, high = torch.stack(recorder.logits).float(), torch.stack(recorder32.logits)
    assert (low - high).abs().max() < 0.1 * high.abs().max()


def test_a_sampler_made_outside_autocast_caches_in_the_dtype_it_samples_under(monkeypatch):
    """bench.py makes its Sampler first and samples under autocast later: the cache is made at the
    first call, so it holds bfloat16 as when everything runs under autocast (the same logits), not
    float32 keys that every attention would cast again."""
    model = make_model(seed=2, std=0.1)
    idx, forced = prompt(2, 3), prompt(2, 20, seed=9)
    per_way = []
    for made_under_autocast in (True, False):
        recorder = Recorder(forced)
        monkeypatch.setattr(engine, "sample_next", recorder)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=made_under_autocast):
            sampler = engine.Sampler(model, 2, 3, 20)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sampler(idx)
        assert sampler.cache.k.dtype == torch.bfloat16
        per_way.append(torch.stack(recorder.logits))
    assert torch.equal(per_way[0], per_way[1])


def weight_casts(step):
    """The shapes of the parameters that step() casts to another dtype (torch.profiler's record)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    return [e.input_shapes[0] for e in prof.events() if e.name == "aten::_to_copy" and len(e.input_shapes[0]) == 2]


def test_under_autocast_the_sampler_casts_the_linear_weights_once_per_call_with_the_same_logits(monkeypatch):
    """Autocast with its cast cache off casts every weight at every forward. The Sampler told to (cast_to)
    casts the Linear weights once per call and runs its steps with those: a decode step casts no weight, the
    logits equal those of the model's own forward under autocast (the Sampler with the casting
    turned off), and weights changed between calls are the ones the next call uses."""
    model = make_model(seed=5, std=0.1, block_size=32)
    idx, forced = prompt(2, 3), prompt(2, 40, seed=8)

    def logits_of(sampler):
        recorder = Recorder(forced)
        monkeypatch.setattr(engine, "sample_next", recorder)
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            sampler(idx)
        return torch.stack(recorder.logits)

    once = engine.Sampler(model, 2, 3, 40, cast_to=torch.bfloat16)  # (the plan's cast_dtype)
    every_step = engine.Sampler(model, 2, 3, 40)
    assert torch.equal(logits_of(once), logits_of(every_step))  # past block_size too: the window steps
    assert model.lm_head.weight.dtype == torch.float32 and model.lm_head.weight is model.transformer.wte.weight

    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(-2)
        model.lm_head.weight.mul_(0.5)
    changed = logits_of(once)
    assert torch.equal(changed, logits_of(every_step))
    monkeypatch.setattr(engine, "sample_next", Recorder(forced))
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        once.cache.pos.fill_(5)
        assert weight_casts(once.decode_step) == []
        every_step.cache.pos.fill_(5)
        assert len(weight_casts(every_step.decode_step)) == 4 * 2 + 1  # 4 matrices a block, and the head


@pytest.mark.slow
def test_generate_under_torch_compile():
    """Dynamo traces the cached forward (the in-place cache writes, cache.pos) without graph
    breaks. aot_eager keeps this to seconds; inductor's code generation takes minutes on a
    small CPU but traces the same graphs."""
    model = make_model(seed=4)
    idx = prompt(2, 5)
    expected = greedy_by_hand(model, idx, 20)
    torch._dynamo.reset()
    model.compile(backend="aot_eager", fullgraph=True)
    try:
        assert torch.equal(sample(model, idx, 20, top_k=1), expected)
        assert torch.equal(sample(model, idx, 20, top_k=1), expected)  # reusing the compiled graphs
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
def test_cuda_bf16_cached_matches_recompute(monkeypatch):
    """Eager cached steps under bf16 autocast: logits close to the recompute path's."""
    model = make_model(seed=5, std=0.1).cuda()
    idx = prompt(2, 3).cuda()
    forced = prompt(2, 30, seed=9).cuda()
    per_path = {}
    for use_cache in (True, False):
        recorder = Recorder(forced)
        monkeypatch.setattr(engine, "sample_next", recorder)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sample(model, idx, 30, use_cache=use_cache, cuda_graph=False)
        per_path[use_cache] = torch.stack(recorder.logits).float()
    scale = per_path[False].abs().max()
    assert (per_path[True] - per_path[False]).abs().max() < 0.05 * scale


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["auto", "manual"])
@pytest.mark.parametrize("batch,length,new", [(1, 1, 40), (3, 5, 40), (2, 16, 12), (2, 23, 9), (1, 3, 6)])
def test_cuda_graph_greedy_equals_recompute(attention, batch, length, new):
    """As sample.py runs: the plan sets the attention ('auto': SDPA on CUDA) and says to replay CUDA graphs."""
    plan = make_plan("cuda", "float32", attention=attention, task="sample")
    model = plan.apply(make_model().cuda())
    assert plan.cuda_graph  # sampling on CUDA
    idx = prompt(batch, length).cuda()
    expected = sample(model, idx, new, top_k=1, use_cache=False)
    assert torch.equal(sample(model, idx, new, top_k=1, cuda_graph=plan.cuda_graph), expected)
    assert torch.equal(sample(model, idx, new, temperature=0, cuda_graph=True), expected)
    assert torch.equal(sample(model, idx, new, temperature=0, cuda_graph=False), expected)


@pytest.mark.gpu
def test_a_reused_sampler_replays_its_graphs_for_new_prompts():
    """The decode and window graphs recorded at the first call serve the next prompts: the cache and
    the window start afresh each time (greedy, float32: the very tokens of the eager loop)."""
    model = make_model(seed=2, std=0.1).cuda()
    sampler = engine.Sampler(model, 2, 5, 40, temperature=0, cuda_graph=True)  # 45 > BLOCK: both kinds of step
    for seed in (1, 2, 3):
        idx = prompt(2, 5, seed=seed).cuda()
        assert torch.equal(sampler(idx), greedy_by_hand(model, idx, 40))
    assert set(sampler.replays) == {("decode", BLOCK), "window"}  # one span: the block is under MIN_SPAN


@pytest.mark.gpu
def test_on_cuda_the_sampler_replays_graphs_where_the_plan_says_and_only_there():
    """CUDA graphs are the plan's decision, not the Sampler's: on a GPU, a Sampler not told records none."""
    model = make_model(seed=2, std=0.1).cuda()
    idx = prompt(2, 5).cuda()
    plan = make_plan("cuda", "float32", task="sample")
    told = engine.Sampler(model, 2, 5, 40, temperature=0, cuda_graph=plan.cuda_graph)
    not_told = engine.Sampler(model, 2, 5, 40, temperature=0)
    assert torch.equal(told(idx), not_told(idx))
    assert told.replays and not_told.replays == {}


@pytest.mark.gpu
def test_cuda_graph_sampling():
    model = make_model(seed=6, std=0.1).cuda()
    idx = prompt(2, 2, seed=7).cuda()
    runs = {}
    for name, kwargs in [("graph", {"cuda_graph": True}), ("graph again", {"cuda_graph": True}), ("eager", {})]:
        torch.manual_seed(1337)
        runs[name] = sample(model, idx, 40, temperature=0.8, top_k=20, **kwargs)
    assert torch.equal(runs["graph"], runs["graph again"])  # the same seed, the same tokens
    assert runs["graph"].shape == (2, 42) and int(runs["graph"].max()) < VOCAB
    assert len(set(runs["graph"][0, 2:].tolist())) > 3
    print("graph == eager with the same seed:", torch.equal(runs["graph"], runs["eager"]))


class DeviceRecorder:
    """Recorder made of device operations only, so that a CUDA graph records it too: each call
    writes its logits into a buffer at a device-side step counter and returns the forced token."""

    def __init__(self, forced, vocab_size):
        self.forced = forced  # (B, steps) on the GPU
        self.logits = torch.full((forced.size(1), forced.size(0), vocab_size), float("nan"), device=forced.device)
        self.step = torch.zeros(1, dtype=torch.long, device=forced.device)

    def __call__(self, logits, temperature=1.0, top_k=None, generator=None):
        self.logits.index_copy_(0, self.step, logits.float()[None])
        token = self.forced.index_select(1, self.step)
        self.step += 1
        return token


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,length,new", [(1, 1, 40), (3, 5, 30), (2, 20, 10)])
def test_cuda_graph_logits_every_step(dtype, batch, length, new, monkeypatch):
    """The replayed steps' logits, at every step and past block_size, against recomputing."""
    model = make_model(seed=2, std=0.1).cuda()
    idx = prompt(batch, length).cuda()
    forced = prompt(batch, new, seed=5).cuda()
    paths = {
        "graph": lambda: sample(model, idx, new, cuda_graph=True),
        "eager": lambda: sample(model, idx, new, cuda_graph=False),
        "recompute": lambda: sample(model, idx, new, use_cache=False),
    }
    logits = {}
    for name, run in paths.items():
        recorder = DeviceRecorder(forced, VOCAB)
        monkeypatch.setattr(engine, "sample_next", recorder)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            assert torch.equal(run(), torch.cat((idx, forced), dim=1))
        assert int(recorder.step) == new
        logits[name] = recorder.logits
    assert not logits["graph"].isnan().any()
    scale = logits["recompute"].abs().max()
    tolerance = 1e-4 if dtype == torch.float32 else 0.05
    for name in ("graph", "eager"):
        assert (logits[name] - logits["recompute"]).abs().max() < tolerance * scale, name
    assert (logits["graph"] - logits["eager"]).abs().max() < tolerance * scale


@pytest.mark.gpu
def test_cuda_graph_bf16_autocast_sampling():
    model = make_model(seed=2, std=0.1).cuda()
    idx = prompt(4, 5).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        sampled = sample(model, idx, 40, temperature=0.8, top_k=10, cuda_graph=True)
    assert sampled.shape == (4, 45) and int(sampled.max()) < VOCAB
