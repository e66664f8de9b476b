"""Apply config files and --key=value flags to a script's module-level defaults, in order.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
    python train.py --help

A script declares its defaults as plain module-level values, then calls configure(globals()). A bare argument
is a config file (plain Python, executed); --key=value sets one key, parsed as a Python literal or else taken as
text, of the default's type (an int is fine for a float). --help lists every key, its default and its comment.
"""

import ast
import difflib
import io
import numbers
import os
import sys
import tokenize

from nanogpt_plus.errors import UserError

SIMPLE_TYPES = (int, float, bool, str)
OWN_RANGE_KEYS = ("seed",)  # torch.manual_seed's range, 2**64 values, is checked where it is used


def config_keys(namespace):
    """The names a user may set: public module-level values of a simple type (or None)."""
    return [k for k, v in namespace.items() if not k.startswith("_") and (v is None or isinstance(v, SIMPLE_TYPES))]


def coerce(key, value, default, nullable=()):
    """value, checked against the type of the default; an int is widened for a float key."""
    if default is None or (value is None and key in nullable):
        return value
    if type(value) is int and type(default) in (int, float) and key not in OWN_RANGE_KEYS:
        if type(default) is int and not -(2**63) <= value < 2**63:  # no size or count is beyond int64
            raise UserError(f"{key}={short(value)} is out of range: give a number from -2**63 to 2**63 - 1")
        if type(default) is float:
            try:
                return float(value)
            except OverflowError:
                raise UserError(f"{key}={short(value)} is out of range: a float's size is below 1e308") from None
    if type(value) is not type(default):
        shown = "None" if value is None else f"{value!r} ({type(value).__name__})"
        also = " or None" if key in nullable else ""
        raise UserError(f"{key} expects {type(default).__name__}{also}, got {shown}")
    return value


def short(number):
    """An integer as it reads in one line: its first 20 digits and their count, if it has more than 24."""
    digits = str(number)
    return digits if len(digits) <= 24 else f"{digits[:20]}... ({len(digits.lstrip('-'))} digits)"


def parse_value(text, default):
    """A Python literal when the text is one, else the text itself; string keys take text as typed."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    if isinstance(default, str) and not isinstance(value, str):
        return text  # --wandb_run_name=2024 stays the string '2024'
    return value


def unknown_key(key, keys, script, where=""):  # with the keys it may have meant
    close = difflib.get_close_matches(key, keys, n=3)
    guess = f"did you mean {' or '.join(repr(k) for k in close)}? " if close else ""
    return UserError(f"unknown config key {key!r}{where}: {guess}(python {script} --help lists every key)")


def flag_without_dashes(arg, keys, script):
    """The UserError for a bare 'max_iters=10' that is no file: a --key=value typed without its dashes."""
    key, _, value = arg.lstrip("-").partition("=")
    if key in keys:
        return UserError(f"config file {arg} not found: to set {key}, write --{key}={value}")
    close = difflib.get_close_matches(key, keys, n=1)
    every = f"python {script} --help lists every key"
    fix = f"did you mean --{close[0]}={value}? ({every})" if close else every
    return UserError(f"config file {arg} not found, and {key!r} is no config key: {fix}")


def not_a_config(path, why, script):
    """A bare argument that is no config file: often a run's folder or checkpoint, meant as --out_dir."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if os.path.isfile(os.path.join(folder, "ckpt.pt")):
        resume = "--init_from=resume " if script == "train.py" else ""
        hint = f"did you mean {resume}--out_dir={folder}?"
    else:
        hint = "a config file is Python, such as config/train_shakespeare_char.py"
    return UserError(f"{path} is not a config file ({why}): {hint}")


def apply_file(path, namespace, keys, nullable, script):
    """Execute a config file against a copy of the namespace; take the keys it set, and return them."""
    try:
        with open(path, "rb") as f:  # bytes: Python reads a source's encoding from the source itself
            source = f.read()
    except FileNotFoundError:
        if "=" in path and path.lstrip("-").partition("=")[0].isidentifier():
            raise flag_without_dashes(path, keys, script) from None
        raise UserError(f"config file {path} not found: check the path (configs live in config/)") from None
    except IsADirectoryError:
        raise not_a_config(path, "it is a folder", script) from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    if b"\0" in source:  # no text holds one; a checkpoint, a .bin or a picture does
        raise not_a_config(path, "it is binary", script)
    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        if e.msg.startswith("(unicode error)") or "Non-UTF-8" in e.msg:
            raise UserError(f"config file {path} is not UTF-8 text (line {e.lineno}): save it as UTF-8") from None
        raise UserError(f"syntax error in config file {path}, line {e.lineno}: {e.msg}") from None
    scope = dict(namespace)
    try:
        exec(code, scope)
    except (Exception, GeneratorExit) as e:  # a config file is user code: say where it failed, briefly
        raise UserError(f"config file {path} failed: {type(e).__name__}: {e}") from None
    except SystemExit as e:  # else the script would end as if it had done its work
        raise UserError(f"config file {path} called sys.exit({e.code!r}): a config file only sets keys") from None
    changed = []
    for k, v in scope.items():
        if k in keys:  # whatever its type: a value the key cannot take is an error, never passed over
            v = plain_value(v, namespace[k])
        elif k.startswith("_") or not isinstance(v, (*SIMPLE_TYPES, type(None))) or k in namespace:
            continue  # private names, modules and functions, the script's own non-config globals
        else:
            raise unknown_key(k, keys, script, where=f" in {path}")
        # the type first: == of another type may raise (a numpy array's) or answer anything
        if not (v is namespace[k] or type(v) is type(namespace[k]) and v == namespace[k]):
            try:
                namespace[k] = coerce(k, v, namespace[k], nullable)
            except UserError as e:
                raise UserError(f"{e} in config file {path}") from None
            changed.append(k)
    return changed


def plain_value(value, default):
    """A config file's value as the plain type of its key where it means the same: a pathlib.Path for a string
    key, another type's integer (numpy's) for an int or float key, a real number for a float key."""
    if isinstance(default, str) and isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(default) in (int, float) and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return type(default)(value)
    if type(default) is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def apply_flag(arg, namespace, keys, nullable, script):
    """Apply one --key=value; return the key."""
    key, eq, text = arg[2:].partition("=")
    if key not in keys:
        raise unknown_key(key, keys, script)
    if not eq:
        raise UserError(f"argument {arg!r} needs a value: write --{key}=VALUE")
    namespace[key] = coerce(key, parse_value(text, namespace[key]), namespace[key], nullable)
    return key


def help_text(namespace, keys, script):
    """Usage, then every key with its default and the comment on its line, under its group's heading comment."""
    lines = [f"usage: python {script} [config_file.py ...] [--key=value ...]"]
    lines += ["Config files (plain Python) and --key=value flags apply in order; a value is a Python literal, or text."]
    path = namespace.get("__file__")
    source = open(path).read() if path and os.path.isfile(path) else ""
    comments = {}  # line number -> (column, text) of every comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
    key_at = {}  # line number -> the key first assigned there (its default; a script may assign it again later)
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in keys:
            if node.targets[0].id not in key_at.values():
                key_at[node.lineno] = node.targets[0].id
    for n in range(min(key_at, default=1) - 1, max(key_at, default=-1) + 1):  # from the heading of the first
        if n in key_at:
            key = key_at[n]
            lines.append(f"  --{key}={namespace[key]!r}".ljust(36) + " " + comments.get(n, (0, ""))[1])
        elif n in comments and comments[n][0] == 0 and comments[n][1].strip("-"):
            lines.append(comments[n][1] + ":")
    return "\n".join(line.rstrip() for line in lines)


def configure(namespace, argv=None, nullable=()):
    """Apply sys.argv[1:] (or argv) to namespace, in order. Returns the final config (every key and its value)
    and the keys a file or flag changed, so that a default such as dtype can follow the device finally chosen."""
    argv = sys.argv[1:] if argv is None else argv
    keys = config_keys(namespace)
    script = os.path.basename(namespace.get("__file__", "train.py"))
    if "--help" in argv or "-h" in argv:
        try:
            print(help_text(namespace, keys, script), flush=True)
        except BrokenPipeError:  # `--help | head` read what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    verbose = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone speaks
    changed = set()
    for arg in argv:
        if arg.startswith("--"):
            key = apply_flag(arg, namespace, keys, nullable, script)
            changed.add(key)
            if verbose:
                print(f"Overriding: {key} = {namespace[key]!r}")
        else:
            if verbose:
                print(f"Overriding config with {arg}:")
            changed.update(apply_file(arg, namespace, keys, nullable, script))
    return {k: namespace[k] for k in keys}, changed


def check_ranges(config, at_least_1=(), not_negative=(), fractions=()):
    """A one-line error for the first key out of its range: at least 1, not negative, or a fraction in [0, 1)."""
    for key in at_least_1:
        if config[key] < 1:
            raise UserError(f"{key}={config[key]} must be at least 1")
    for key in not_negative:
        if config[key] < 0:
            raise UserError(f"{key}={config[key]} must not be negative")
    for key in fractions:
        if not 0 <= config[key] < 1:
            raise UserError(f"{key}={config[key]} must be in [0, 1)")


def adopt_saved(namespace, saved, changed, keep=(), nullable=()):
    """A resumed run goes on as it was: each key of the script takes its value in `saved` (the checkpoint's
    config), unless a file or flag changed it now (then said once, if it differs) or it is in `keep`. Returns
    the final config."""
    keys = config_keys(namespace)
    verbose = os.environ.get("RANK", "0") == "0"
    for key in keys:
        if key not in saved or key in keep:
            continue
        if key in changed:
            if verbose and saved[key] != namespace[key]:
                print(f"note: {key} {namespace[key]!r} (checkpoint had {saved[key]!r})")
            continue
        try:
            namespace[key] = coerce(key, saved[key], namespace[key], nullable)
        except UserError as e:
            raise UserError(f"the checkpoint's config is malformed ({e}): give --{key}=VALUE") from None
    return {k: namespace[k] for k in keys}


def adopt_architecture(config, changed, model, init_from):
    """A resumed or pretrained model brings its own architecture into config: a key set now to another value is
    an error, except a smaller block_size for GPT-2, which crops the model. Returns the block size."""
    source = "checkpoint" if init_from == "resume" else f"{init_from} model"
    for key in ("n_layer", "n_head", "n_embd", "bias"):
        have = getattr(model.config, key)
        if key in changed and config[key] != have:
            raise UserError(
                f"{key}={config[key]} contradicts the {source}, which has {key}={have}: "
                f"drop --{key} (the architecture comes from the {source}) or set --{key}={have}"
            )
        config[key] = have
    block_size, have = config["block_size"], model.config.block_size
    if "block_size" in changed and block_size != have:
        if block_size > have or init_from == "resume":
            hint = f"use --block_size={have}" + (" (or smaller)" if init_from != "resume" else "")
            raise UserError(f"block_size={block_size} does not fit the {source}, whose block_size is {have}: {hint}")
        model.crop_block_size(block_size)
    config["block_size"] = model.config.block_size
    return config["block_size"]
