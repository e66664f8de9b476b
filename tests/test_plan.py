"""plan.py: every 'auto' decided once into concrete choices, what cannot work refused in one line,
and the plan followed as it says (the model's attention and head, compiled blocks, the fused
optimizer, the Sampler's CUDA graphs, the dtype, the device of each rank, HellaSwag's eval mode)."""

import pytest
import torch

from model import GPT, GPTConfig, full_logits_loss
from nanogpt_plus import chunked_loss, engine, hellaswag, parallel
from nanogpt_plus import plan as plan_module
from nanogpt_plus.errors import UserError
from nanogpt_plus.plan import make_plan


@pytest.fixture
def on_cuda(monkeypatch):
    """Decisions for a CUDA machine, taken on this one: check_device answers as a GPU would."""
    monkeypatch.setattr(plan_module, "check_device", lambda device, dtype: torch.device(device).type)


def test_a_cpu_run_is_eager_with_full_logits_and_the_masked_softmax():
    p = make_plan("cpu", "float32", compile=False)
    assert (p.compile, p.cuda_graph, p.head_loss, p.attention) == ("none", False, "full", "manual")
    assert p.describe() == "cpu float32, not compiled, full logits, masked-softmax attention"


@pytest.mark.parametrize(
    "settings,expected",
    [
        # one GPU, one micro-step: each block compiled and the micro-step recorded
        (dict(), ("blocks", "default", True, "chunked", "sdpa")),
        # gradient accumulation or several processes: torch.compile's default mode, nothing recorded
        (dict(micro_steps=4), ("model", "default", False, "chunked", "sdpa")),
        (dict(processes=2), ("model", "default", False, "chunked", "sdpa")),
        # float16's gradient scaler is not recorded; a character vocabulary gets the full head
        (dict(dtype="float16"), ("blocks", "default", False, "chunked", "sdpa")),
        (dict(vocab_size=65), ("blocks", "default", True, "full", "sdpa")),
        # what is asked for is what runs
        (dict(compile_mode="regional", micro_steps=2), ("blocks", "default", False, "chunked", "sdpa")),
        (dict(compile_mode="max-autotune"), ("model", "max-autotune", False, "chunked", "sdpa")),
        (dict(compile=False, head_loss="full", attention="manual"), ("none", "auto", False, "full", "manual")),
    ],
)  # fmt: skip
def test_cuda_decisions(on_cuda, settings, expected):
    args = dict(dtype="bfloat16") | settings
    p = make_plan("cuda", args.pop("dtype"), **{"compile": True} | args)
    assert (p.compile, p.compile_mode, p.cuda_graph, p.head_loss, p.attention) == expected


def test_the_one_line_says_what_runs(on_cuda):
    p = make_plan("cuda", "bfloat16", compile=True)
    assert p.describe() == (
        "cuda bfloat16, each block compiled, micro-step replayed as a CUDA graph, chunked head+loss, SDPA attention"
    )
    p = make_plan("cuda:1", "bfloat16", compile=True, processes=8, fsdp=True)
    assert p.describe().startswith("cuda:1 bfloat16, FSDP over 8 processes, model compiled (mode default), ")
    sampling = make_plan("cuda", "bfloat16", task="sample")
    assert sampling.describe() == (
        "cuda bfloat16, not compiled, decode replayed as CUDA graphs, block weights held in bfloat16, SDPA attention"
    )


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(compile_mode="reduce-overhead", micro_steps=4), "records CUDA graphs, which cannot accumulate"),
        (dict(dtype="float16", fsdp=True, processes=2), "fsdp=True trains with --dtype=bfloat16 or float32"),
        (dict(head_loss="fast"), "head_loss='fast': choose auto, chunked or full"),
        (dict(attention="flash"), "attention='flash': choose auto, sdpa or manual"),
        (dict(compile_mode="turbo"), "unknown compile_mode='turbo'"),
    ],
)
def test_what_cannot_work_is_one_line(on_cuda, settings, message):
    args = dict(dtype="bfloat16", compile=True) | settings
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_plan("cuda", args.pop("dtype"), **args)


def test_apply_sets_the_math_path_and_compiles_each_block_in_place(on_cuda, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=3, n_head=2, n_embd=16))
    names = list(model.state_dict())
    plan = make_plan("cuda", "bfloat16", compile=True, head_loss="chunked", attention="manual")
    plan.apply(model)
    assert [block.attn.attention for block in model.transformer.h] == ["manual"] * 3
    assert model.head_loss.func is chunked_loss.head_loss
    assert model.head_loss.keywords == {"compile_step": True}
    assert compiled == [("Block", {"dynamic": False})] * 3
    assert list(model.state_dict()) == names  # in place: a checkpoint keeps nanoGPT's names
    compiled.clear()
    make_plan("cuda", "bfloat16", compile=True, micro_steps=2, vocab_size=64).apply(model)
    assert compiled == [("GPT", {"mode": "default", "dynamic": False})]
    assert model.head_loss is full_logits_loss  # model.py's own again
    assert [block.attn.attention for block in model.transformer.h] == ["sdpa"] * 3


def test_a_plan_followed_on_the_cpu_gives_the_same_loss_either_way():
    """The two attention paths and the two heads the plan picks between compute the same loss."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=2, n_head=4, n_embd=32)).double()
    idx = torch.randint(0, 97, (2, 16))
    losses = []
    for head_loss, attention in (("full", "manual"), ("chunked", "sdpa")):
        make_plan("cpu", "float32", head_loss=head_loss, attention=attention).apply(model)
        logits, loss = model(idx, idx)
        assert (logits is None) == (head_loss == "chunked")
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)


def test_sampling_holds_the_block_weights_in_the_autocast_dtype_with_the_same_logits():
    """Autocast casts each Linear weight at every step; a sampling plan casts the blocks' once: the
    same values, so the same logits, bit for bit. LayerNorm and the (tied) embedding stay float32."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=2, n_head=4, n_embd=32))
    reference = GPT(model.config).eval()
    reference.set_attention("manual")
    reference.load_state_dict(model.state_dict())
    make_plan("cpu", "bfloat16", attention="manual", task="sample").apply(model.eval())
    assert model.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    assert model.transformer.h[0].ln_1.weight.dtype == model.lm_head.weight.dtype == torch.float32
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(idx)[0], reference(idx)[0])


def test_bf16_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"does not support bfloat16: use --dtype=float16"):
        plan_module.check_device("cuda", "bfloat16")
    assert plan_module.check_device("cuda", "float16") == "cuda"
    assert plan_module.check_device("cpu", "bfloat16") == "cpu"  # the CPU emulates it
    assert plan_module.default_dtype("cuda") == "float16"


def test_the_plan_says_whether_adamw_is_fused_and_the_optimizer_follows(on_cuda):
    """Fused on CUDA and the CPU, torch's default elsewhere: the plan decides, configure_optimizers
    (called as train.py and bench.py call it) does as told."""
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    for device, fused in (("cuda", True), ("cuda:1", True), ("cpu", True), ("mps", False)):
        plan = make_plan(device, "float32")
        assert plan.fused_optimizer is fused, device
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), plan.device_type, fused=plan.fused_optimizer)
        assert opt.defaults["fused"] is (True if fused else None), device


def test_the_plan_says_whether_the_chunked_loss_step_is_compiled(on_cuda):
    assert make_plan("cuda", "bfloat16").chunk_step_compiled is True
    assert make_plan("cuda", "bfloat16", vocab_size=65).chunk_step_compiled is False  # the full head: no step
    assert make_plan("cpu", "float32", head_loss="chunked").chunk_step_compiled is False  # as written on the CPU
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    make_plan("cpu", "float32", head_loss="chunked").apply(model)
    assert (model.head_loss.func, model.head_loss.keywords) == (chunked_loss.head_loss, {"compile_step": False})


def test_the_default_dtype_follows_the_device_finally_chosen(monkeypatch):
    """The config block's default dtype is made for the default device; a --device flag changes the
    device, and the dtype follows it unless a dtype was given too (train.py, sample.py, bench.py,
    eval_hellaswag.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert plan_module.chosen_dtype("cpu", "bfloat16", changed={"device"}) == "float32"
    assert plan_module.chosen_dtype("cuda", "float32", changed=set()) == "bfloat16"
    assert plan_module.chosen_dtype("cpu", "bfloat16", changed={"device", "dtype"}) == "bfloat16"


def test_each_process_of_a_torchrun_job_gets_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert plan_module.device_for_rank("cuda", 2) == "cuda:2"
    assert plan_module.device_for_rank("cuda:0", 3) == "cuda:3"  # whichever CUDA device was asked for
    assert plan_module.device_for_rank("cpu", 3) == "cpu"  # gloo's processes share the CPU
    with pytest.raises(UserError, match=r"LOCAL_RANK=4 but this machine has 4 GPU\(s\)"):
        plan_module.device_for_rank("cuda", 4)
    assert parallel.device_for_rank is plan_module.device_for_rank  # what parallel.init asks


def test_hellaswag_scores_in_the_mode_the_plan_says(monkeypatch):
    """plan.scoring: eval mode for the passes (no dropout), the model's own mode back afterwards,
    even after an error; hellaswag.evaluate runs its passes inside it."""
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    with plan_module.scoring(model):
        assert not model.training
    assert model.training
    with pytest.raises(RuntimeError), plan_module.scoring(model.eval()):
        raise RuntimeError
    assert not model.training
    assert hellaswag.scoring is plan_module.scoring


def test_the_sampler_replays_cuda_graphs_only_where_told():
    """Sampling's CUDA graphs are the plan's decision (plan.cuda_graph: sampling on CUDA): a Sampler
    records none unless told, and refuses to where it cannot (tests/test_generate.py replays them on a GPU)."""
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    plan = make_plan("cpu", "float32", task="sample")
    assert plan.cuda_graph is False
    sampler = engine.Sampler(model, 1, 2, 10, cuda_graph=plan.cuda_graph)
    sampler(torch.zeros((1, 2), dtype=torch.long))
    assert sampler.graph_device is None and sampler.replays == {}
    with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
        engine.Sampler(model, 1, 2, 10, cuda_graph=True)


def test_the_plan_says_how_sampling_casts_weights_and_where_it_builds_a_checkpoints_model():
    """Sampling or evaluating under a 16-bit autocast casts Linear weights once (Plan.apply, the Sampler's
    cast_to); training and float32 cast none. Only sampling on CUDA builds a checkpoint's model on the GPU."""
    assert make_plan("cpu", "bfloat16", task="sample").cast_dtype == torch.bfloat16
    assert make_plan("cpu", "bfloat16", task="eval").cast_dtype == torch.bfloat16
    assert (
        make_plan("cpu", "bfloat16").cast_dtype is None
        and make_plan("cpu", "float32", task="sample").cast_dtype is None
    )
    assert make_plan("cpu", "float32", task="sample").build_device is None
