"""Apply config files and --key=value overrides to a script's module-level defaults.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

Each script declares its defaults as plain module-level values, then calls
`configure(globals())`. Arguments are applied in order: a bare argument is a config
file (plain Python, executed), `--key=value` sets one key. Values parse as Python
literals and fall back to strings; the type must match the default (an int is
accepted for a float). Unknown keys and wrong types raise UserError naming the key.
"""

import ast
import sys

from common import UserError

SIMPLE_TYPES = (int, float, bool, str)


def config_keys(namespace: dict) -> list[str]:
    """The names a user may set: public module-level values of a simple type."""
    return [
        k
        for k, v in namespace.items()
        if not k.startswith("_") and (v is None or isinstance(v, SIMPLE_TYPES)) and not callable(v)
    ]


def coerce(key: str, value, default, nullable=()):
    """Check value against the default's type; an int is widened for a float key."""
    if default is None or (value is None and key in nullable):
        return value
    expected = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        shown = "None" if value is None else f"{value!r} ({type(value).__name__})"
        extra = " or None" if key in nullable else ""
        raise UserError(f"{key} expects {expected.__name__}{extra}, got {shown}")
    return value


def parse_value(text: str, default):
    """A literal when the text is one, else the text itself; string keys take text as typed."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    if isinstance(default, str) and not isinstance(value, str):
        return text  # e.g. --wandb_run_name=2024 stays the string '2024'
    return value


def apply_file(path: str, namespace: dict, keys: list[str], nullable=()) -> list[str]:
    """Execute a config file against a copy of the namespace and take the keys it sets."""
    try:
        with open(path) as f:
            source = f.read()
    except FileNotFoundError:
        raise UserError(f"config file {path} not found: check the path (configs live in config/)") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise UserError(f"syntax error in config file {path}, line {e.lineno}: {e.msg}") from None
    scope = dict(namespace)
    try:
        exec(code, scope)
    except Exception as e:  # a config file is user code: report where it failed, briefly
        raise UserError(f"config file {path} failed: {type(e).__name__}: {e}") from None
    changed = []
    for k, v in scope.items():
        if k.startswith("_") or k in ("__builtins__",) or not isinstance(v, SIMPLE_TYPES + (type(None),)):
            continue
        if k not in keys:
            if k in namespace:
                continue  # a non-config global such as a helper constant
            raise UserError(f"unknown config key {k!r} in {path}: {did_you_mean(k, keys)}")
        if v is namespace[k] or v == namespace[k] and type(v) is type(namespace[k]):
            continue
        namespace[k] = coerce(k, v, namespace[k], nullable)
        changed.append(k)
    return changed


def apply_override(arg: str, namespace: dict, keys: list[str], nullable=()) -> str:
    """Apply one --key=value argument."""
    body = arg[2:]
    if "=" not in body:
        raise UserError(f"argument {arg!r} needs a value: write --{body}=VALUE")
    key, text = body.split("=", 1)
    if key not in keys:
        raise UserError(f"unknown config key {key!r}: {did_you_mean(key, keys)}")
    namespace[key] = coerce(key, parse_value(text, namespace[key]), namespace[key], nullable)
    return key


def did_you_mean(key: str, keys: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, keys, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys are " + ", ".join(sorted(keys))


def configure(namespace: dict, argv=None, nullable=(), verbose=True) -> tuple[dict, set]:
    """Apply sys.argv[1:] (or argv) to namespace in order.

    Returns the final config (every settable key and its value) and the set of keys that
    a file or flag changed, so scripts can derive defaults such as dtype from device.
    """
    argv = sys.argv[1:] if argv is None else argv
    keys = config_keys(namespace)
    changed = set()
    for arg in argv:
        if arg.startswith("--"):
            key = apply_override(arg, namespace, keys, nullable)
            changed.add(key)
            if verbose:
                print(f"Overriding: {key} = {namespace[key]!r}")
        else:
            if verbose:
                print(f"Overriding config with {arg}:")
            changed.update(apply_file(arg, namespace, keys, nullable))
    return {k: namespace[k] for k in keys}, changed
