"""configurator.configure: literals, types, order of files and flags, errors; and the config/ files."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configurator import configure
from nanogpt_plus.errors import UserError

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "train.py"


def defaults() -> dict:
    return {
        "batch_size": 12,
        "learning_rate": 6e-4,
        "compile": True,
        "out_dir": "out",
        "wandb_run_name": "gpt2",
        "maybe": None,
        "_hidden": 1,  # private: not a key
        "helper": len,  # callable: not a key
        "ARCH": ("n_layer",),  # not a simple type: not a key
    }


def run(argv, ns=None, **kw):
    ns = defaults() if ns is None else ns
    config, changed = configure(ns, argv, **kw)
    return ns, config, changed


def write(tmp_path, text, name="cfg.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------- --key=value


def test_no_arguments_keeps_defaults_and_lists_only_simple_public_keys():
    ns, config, changed = run([])
    assert config == {"batch_size": 12, "learning_rate": 6e-4, "compile": True, "out_dir": "out",
                      "wandb_run_name": "gpt2", "maybe": None}  # fmt: skip
    assert changed == set()


@pytest.mark.parametrize(
    "arg, key, value",
    [
        ("--batch_size=32", "batch_size", 32),
        ("--learning_rate=1e-3", "learning_rate", 1e-3),
        ("--learning_rate=1", "learning_rate", 1.0),  # an int is widened for a float
        ("--compile=False", "compile", False),
        ("--out_dir=out-shakespeare", "out_dir", "out-shakespeare"),  # not a literal: kept as text
        ("--out_dir='quoted'", "out_dir", "quoted"),  # a str literal
        ("--wandb_run_name=2024", "wandb_run_name", "2024"),  # a str key keeps digits as text
        ("--out_dir=a=b", "out_dir", "a=b"),  # only the first '=' splits
        ("--maybe=[1, 2]", "maybe", [1, 2]),  # a None default takes any literal
    ],
)
def test_override_parses_literals(arg, key, value):
    ns, config, changed = run([arg])
    assert config[key] == value and type(config[key]) is type(value)
    assert ns[key] == config[key]  # written back into the namespace
    assert changed == {key}


def test_a_big_int_for_a_float_key_is_a_float():
    _, config, _ = run([f"--learning_rate={10**20}"])
    assert config["learning_rate"] == 1e20 and type(config["learning_rate"]) is float


def test_int_for_float_becomes_float():
    _, config, _ = run(["--learning_rate=3"])
    assert type(config["learning_rate"]) is float


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--batch_size=1.5", r"^batch_size expects int, got 1\.5 \(float\)$"),
        ("--batch_size=big", r"^batch_size expects int, got 'big' \(str\)$"),
        ("--compile=1", r"^compile expects bool, got 1 \(int\)$"),
        ("--learning_rate=True", r"^learning_rate expects float, got True \(bool\)$"),
        ("--batch_size=None", r"^batch_size expects int, got None$"),
        ("--batchsize=3", r"^unknown config key 'batchsize': did you mean 'batch_size'\? \(python \w+\.py --help"),
        ("--zzz=3", r"^unknown config key 'zzz': \(python \w+\.py --help lists every key\)$"),
        ("--_hidden=2", r"unknown config key '_hidden'"),
        ("--batch_size", r"needs a value: write --batch_size=VALUE"),
        (f"--batch_size={10**20}", r"^batch_size=\d{21} is out of range: give a number from -2\*\*63 to 2\*\*63 - 1$"),
        (f"--batch_size={-(2**64)}", rf"^batch_size={-(2**64)} is out of range: give a number from -2\*\*63 to"),
        (f"--learning_rate=-{10**400}", r"^learning_rate=-1000000000000000000\.\.\. \(401 digits\) is out of range"),
    ],
)
def test_override_errors_are_one_line_naming_the_key(arg, message):
    with pytest.raises(UserError, match=message) as info:
        run([arg])
    assert "\n" not in str(info.value)


def test_nullable_keys_accept_none():
    _, config, _ = run(["--batch_size=None"], nullable=("batch_size",))
    assert config["batch_size"] is None
    with pytest.raises(UserError, match="batch_size expects int or None"):
        run(["--batch_size=x"], nullable=("batch_size",))


# ---------------------------------------------------------------------------- config files


def test_file_then_flags_apply_in_order(tmp_path):
    cfg = write(tmp_path, "batch_size = 64\nlearning_rate = 2e-3\n")
    _, config, changed = run([cfg, "--batch_size=8"])
    assert config["batch_size"] == 8 and config["learning_rate"] == 2e-3
    _, config, _ = run(["--batch_size=8", cfg])  # a later file wins over an earlier flag
    assert config["batch_size"] == 64
    assert changed == {"batch_size", "learning_rate"}


def test_file_may_compute_import_and_keep_helpers(tmp_path):
    cfg = write(tmp_path, "import math\n_base = 3\nbatch_size = _base * 4 + 1\nout_dir = 'o-' + str(batch_size)\n")
    _, config, changed = run([cfg])
    assert config["batch_size"] == 13 and config["out_dir"] == "o-13"
    assert changed == {"batch_size", "out_dir"}


def test_file_that_sets_a_key_to_its_default_does_not_change_it(tmp_path):
    _, _, changed = run([write(tmp_path, "batch_size = 12\nlearning_rate = 6e-4\n")])
    assert changed == set()


def test_file_int_for_float_and_wrong_type(tmp_path):
    _, config, _ = run([write(tmp_path, "learning_rate = 1\n")])
    assert config["learning_rate"] == 1.0 and type(config["learning_rate"]) is float
    with pytest.raises(UserError, match=r"^compile expects bool, got 'no' \(str\) in config file .*bad\.py$"):
        run([write(tmp_path, "compile = 'no'\n", "bad.py")])


def test_file_values_of_other_types_that_mean_the_same_are_taken(tmp_path):
    text = "import pathlib\nimport numpy as np\nout_dir = pathlib.Path('runs') / 'a'\nbatch_size = np.int64(16)\n"
    text += "learning_rate = np.float32(0.5)\n"
    _, config, changed = run([write(tmp_path, text)])
    assert (config["out_dir"], config["batch_size"], config["learning_rate"]) == (str(Path("runs", "a")), 16, 0.5)
    assert [type(config[k]) for k in ("out_dir", "batch_size", "learning_rate")] == [str, int, float]
    assert changed == {"out_dir", "batch_size", "learning_rate"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("out_dir = ('runs', 'a')\n", r"^out_dir expects str, got \('runs', 'a'\) \(tuple\) in config file .*cfg\.py$"),
        ("import numpy\nbatch_size = numpy.float64(2.5)\n", r"^batch_size expects int, got .*2\.5.* in config file "),
        ("compile = [False]\n", r"^compile expects bool, got \[False\] \(list\) in config file .*cfg\.py$"),
        ("import numpy\nbatch_size = numpy.array([1, 2])\n", r"^batch_size expects int, got .* \(ndarray\) in config "),
        ("import sys\nsys.exit()\n", r"^config file .*cfg\.py called sys\.exit\(None\): a config file only sets keys$"),
        ("import sys\nsys.exit(0)\n", r"^config file .*cfg\.py called sys\.exit\(0\)"),
    ],
)
def test_file_values_a_key_cannot_take_and_exits_are_one_line(tmp_path, text, message):
    ns = defaults()
    with pytest.raises(UserError, match=message):
        run([write(tmp_path, text)], ns)
    assert ns == defaults() | {"ARCH": ns["ARCH"], "helper": ns["helper"]}  # nothing was set


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_sise = 4\n", r"unknown config key 'batch_sise' in .*cfg\.py: did you mean 'batch_size'\?"),
        ("batch_size = (\n", r"syntax error in config file .*cfg\.py, line 1"),
        ("batch_size = 1 / 0\n", r"config file .*cfg\.py failed: ZeroDivisionError"),
        ("raise GeneratorExit\n", r"config file .*cfg\.py failed: GeneratorExit"),  # not an Exception
    ],
)
def test_file_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        run([write(tmp_path, text)])


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"config file .*nope\.py not found"):
        run([str(tmp_path / "nope.py")])


@pytest.mark.parametrize(
    "arg, message",
    [
        ("batch_size=32", "config file batch_size=32 not found: to set batch_size, write --batch_size=32"),
        ("-batch_size=32", "config file -batch_size=32 not found: to set batch_size, write --batch_size=32"),
        ("batch_sise=32", "config file batch_sise=32 not found, and 'batch_sise' is no config key: did you mean "
                          "--batch_size=32? (python train.py --help lists every key)"),
        ("zzz=1", "config file zzz=1 not found, and 'zzz' is no config key: python train.py --help lists every key"),
    ],
)  # fmt: skip
def test_a_flag_typed_without_its_dashes_is_shown_with_them(tmp_path, monkeypatch, arg, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        run([arg])
    assert str(e.value) == message


def test_a_config_file_whose_name_holds_an_equals_sign_is_still_a_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "batch_size=32").write_text("batch_size = 16\n")
    assert run(["batch_size=32"])[1]["batch_size"] == 16


@pytest.mark.parametrize(
    "arg, script, message",
    [  # a run's checkpoint or folder given where a config file goes: the user meant --out_dir
        ("out/ckpt.pt", "sample.py", "out/ckpt.pt is not a config file (it is binary): did you mean --out_dir=out?"),
        ("out/ckpt.pt", "train.py", "(it is binary): did you mean --init_from=resume --out_dir=out?"),
        ("out", "export_hf.py", "out is not a config file (it is a folder): did you mean --out_dir=out?"),
        ("data/train.bin", "train.py", "data/train.bin is not a config file (it is binary): a config file is Python"),
        ("latin1.py", "train.py", "config file latin1.py is not UTF-8 text (line 1): save it as UTF-8"),
    ],
)
def test_a_file_that_is_no_config_file_is_one_line(tmp_path, monkeypatch, arg, script, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "out" / "ckpt.pt").write_bytes(b"PK\x03\x04\x00\x00\x08\x08" + bytes(range(256)))  # torch.save: a zip
    (tmp_path / "data" / "train.bin").write_bytes(bytes([1, 0, 2, 0, 3, 0]))
    (tmp_path / "latin1.py").write_bytes('start = "café"\n'.encode("latin-1"))
    with pytest.raises(UserError) as e:
        run([arg], defaults() | {"__file__": str(REPO / script)})
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_config_file_may_declare_its_encoding(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_bytes('# -*- coding: latin-1 -*-\nout_dir = "café"\n'.encode("latin-1"))
    assert run([str(path)])[0]["out_dir"] == "café"


def test_unknown_key_in_a_file_never_lands_in_the_namespace(tmp_path):
    ns = defaults()
    with pytest.raises(UserError):
        run([write(tmp_path, "batch_size = 4\nbatch_sise = 4\n")], ns)
    assert "batch_sise" not in ns


def test_a_resumed_run_takes_the_checkpoints_config_under_what_is_given_now(tmp_path, capsys):
    """Precedence: the script's defaults < the checkpoint's config < files and flags given now; a key given
    now that differs from the checkpoint's is printed once; `keep` keys and unknown saved keys are left."""
    from configurator import adopt_saved

    saved = {"batch_size": 64, "learning_rate": 1e-3, "compile": False, "out_dir": "elsewhere", "maybe": 3, "old": 1}
    ns, _, changed = run(["--learning_rate=2e-3", write(tmp_path, "compile = False\n")])
    config = adopt_saved(ns, saved, changed, keep=("out_dir",))
    assert config == {"batch_size": 64, "learning_rate": 2e-3, "compile": False, "out_dir": "out",
                      "wandb_run_name": "gpt2", "maybe": 3}  # fmt: skip
    assert {k: ns[k] for k in config} == config  # the script's globals too
    assert capsys.readouterr().out.splitlines()[-1] == "note: learning_rate 0.002 (checkpoint had 0.001)"
    with pytest.raises(UserError, match=r"^the checkpoint's config is malformed \(batch_size expects int, got '64' "):
        adopt_saved(run([])[0], {"batch_size": "64"}, set())


# ---------------------------------------------------------------------------- the config/ files on train.py


@pytest.fixture
def train_config(monkeypatch):
    """train.py's config block run with these arguments: (config, the keys they changed)."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # train.py installs its own

    def run(*argv):
        source = TRAIN.read_text()
        end = source.index("\n# ---", source.index("config, changed = configure("))
        monkeypatch.setattr(sys, "argv", [str(TRAIN), *argv])
        scope = {"__file__": str(TRAIN), "__name__": "train_config"}
        exec(compile(source[:end], str(TRAIN), "exec"), scope)
        return scope["config"], scope["changed"]

    return run


def test_train_defaults_are_the_classic_ones(train_config):
    config, changed = train_config()
    classic = dict(
        out_dir="out", eval_interval=2000, log_interval=1, eval_iters=200, eval_only=False,
        always_save_checkpoint=True, init_from="scratch", wandb_log=False, wandb_project="owt",
        wandb_run_name="gpt2", dataset="openwebtext", gradient_accumulation_steps=40, batch_size=12,
        block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False, learning_rate=6e-4,
        max_iters=600000, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, decay_lr=True,
        warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5, backend="nccl", compile=True,
    )  # fmt: skip
    assert {k: config[k] for k in classic} == classic
    # keys this project adds: fsdp and overwrite are off by default; compile_mode, head_loss and
    # attention 'auto' only pick how the same math runs; the optimizer is AdamW unless asked, and
    # the muon_ keys are Muon's alone; HellaSwag is off until hellaswag_interval asks for it
    beyond_classic = {"compile_mode", "head_loss", "attention", "fsdp", "overwrite"}
    beyond_classic |= {"optimizer", "muon_lr", "muon_momentum", "muon_weight_decay"}
    beyond_classic |= {"hellaswag_interval", "hellaswag_file"}
    assert set(config) == set(classic) | {"device", "dtype"} | beyond_classic
    assert config["compile_mode"] == config["head_loss"] == config["attention"] == "auto"
    assert config["fsdp"] is False and config["overwrite"] is False and config["optimizer"] == "adamw"
    assert config["hellaswag_interval"] == 0
    assert changed == set()


def test_dtype_follows_the_final_device(train_config):
    config, _ = train_config("--device=cpu")
    assert config["dtype"] == "float32"
    config, _ = train_config("--device=cpu", "--dtype=bfloat16")
    assert config["dtype"] == "bfloat16"


SHAKESPEARE_CHAR = dict(
    out_dir="out-shakespeare-char", eval_interval=250, eval_iters=200, log_interval=10,
    always_save_checkpoint=False, wandb_log=False, wandb_project="shakespeare-char", wandb_run_name="mini-gpt",
    dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=64, block_size=256, n_layer=6,
    n_head=6, n_embd=384, dropout=0.2, learning_rate=1e-3, max_iters=5000, lr_decay_iters=5000, min_lr=1e-4,
    beta2=0.99, warmup_iters=100,
)  # fmt: skip
GPT2 = dict(
    wandb_log=True, wandb_project="owt", wandb_run_name="gpt2-124M", batch_size=12, block_size=1024,
    gradient_accumulation_steps=40, max_iters=600000, lr_decay_iters=600000, eval_interval=1000, eval_iters=200,
    log_interval=10, weight_decay=0.1,
)  # fmt: skip
FINETUNE = dict(
    out_dir="out-shakespeare", eval_interval=5, eval_iters=40, wandb_log=False, wandb_project="shakespeare",
    dataset="shakespeare", init_from="gpt2-xl", always_save_checkpoint=False, batch_size=1,
    gradient_accumulation_steps=32, max_iters=20, learning_rate=3e-5, decay_lr=False,
)  # fmt: skip
EVAL = dict(batch_size=8, eval_iters=500, eval_only=True, wandb_log=False)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("train_shakespeare_char.py", SHAKESPEARE_CHAR),
        ("train_gpt2.py", GPT2),
        ("finetune_shakespeare.py", FINETUNE),
        ("eval_gpt2.py", dict(EVAL, init_from="gpt2")),
        ("eval_gpt2_medium.py", dict(EVAL, init_from="gpt2-medium")),
        ("eval_gpt2_large.py", dict(EVAL, init_from="gpt2-large")),
        ("eval_gpt2_xl.py", dict(EVAL, init_from="gpt2-xl")),
    ],
)
def test_config_files_hold_the_classic_values(train_config, name, expected):
    config, _ = train_config("--device=cuda", str(REPO / "config" / name))  # on a GPU (none is needed here)
    assert {k: config[k] for k in expected} == expected
    for k, v in expected.items():
        assert type(config[k]) is type(v), k


def test_finetune_run_name_is_timestamped(train_config):
    config, _ = train_config(str(REPO / "config" / "finetune_shakespeare.py"))
    prefix, stamp = config["wandb_run_name"].split("-", 1)
    assert prefix == "ft" and float(stamp) > 1.6e9


QUICK = dict(compile=False, eval_iters=20, block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
             learning_rate=4e-3, min_lr=4e-4, max_iters=1000, lr_decay_iters=1000)  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_shakespeare_char_without_a_gpu_is_the_quick_recipe_and_says_so(train_config, capsys, device):
    config, _ = train_config(f"--device={device}", str(REPO / "config" / "train_shakespeare_char.py"))
    assert {k: config[k] for k in QUICK} == QUICK
    assert {k: config[k] for k in SHAKESPEARE_CHAR if k not in QUICK} == {
        k: v for k, v in SHAKESPEARE_CHAR.items() if k not in QUICK
    }
    said = [line for line in capsys.readouterr().out.splitlines() if "quick recipe" in line]
    assert len(said) == 1 and f"no CUDA GPU (device {device})" in said[0] and "1,000 iterations" in said[0]


def test_flags_apply_on_top_of_the_quick_recipe(train_config):
    config, changed = train_config(
        "--device=cpu", str(REPO / "config" / "train_shakespeare_char.py"), "--compile=True", "--max_iters=300"
    )
    assert (config["device"], config["compile"], config["max_iters"], config["batch_size"]) == ("cpu", True, 300, 12)
    assert {"device", "compile", "max_iters", "dataset"} <= changed


# ---------------------------------------------------------------------------- --help


@pytest.mark.parametrize("script", ["train.py", "sample.py", "bench.py", "eval_hellaswag.py", "export_hf.py"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_key_with_its_default_and_comment(script, flag):
    """Each script's --help: every key of its defaults block once, its default as Python writes it,
    and the comment of its line, under the block's own comment lines as headings (not the script's later
    comments, nor a key assigned again later); exit status 0, nothing else done. --help in a new process (what its
    start prints counts too), -h in this one (user_errors.run_here: the same output and exit status)."""
    if flag == "--help":
        cmd = [sys.executable, str(REPO / script), "--dataset=nope", flag]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    else:
        from user_errors import run_here

        proc = run_here(REPO / script, REPO, ["--dataset=nope", flag])
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(f"usage: python {script} [config_file.py ...] [--key=value ...]")
    source = (REPO / script).read_text()
    block = source[: source.index("configure(globals()")]
    keys = re.findall(r"^([a-z]\w*) = .*?  # (.*)$", block, re.M)  # (a leading _ marks a module's own name)
    assert len(keys) >= 3
    lines = proc.stdout.splitlines()[2:]  # (after the usage)
    flags = [line.split("=")[0].strip() for line in lines if line.startswith("  --")]
    assert len(flags) == len(set(flags)), [f for f in flags if flags.count(f) > 1]
    headings = [line.removesuffix(":") for line in lines if not line.startswith("  --")]
    assert all(re.search(rf"^# {re.escape(h)}$", block, re.M) for h in headings), headings
    listed = dict(re.findall(r"^  --(\w+)=.*?  +(.*)$", proc.stdout, re.M))
    if script in ("train.py", "sample.py"):  # init_from takes a local Hugging Face folder too
        assert "Hugging Face folder" in listed["init_from"]
    for key, comment in keys:
        assert listed.pop(key) == comment.strip(), key
    assert listed == {}  # nothing but the keys
    for key, default in re.findall(r"^  --(\w+)=(.*?)  ", proc.stdout, re.M):
        assert "(" in default or ast.literal_eval(default) is not None or default == "None", key
