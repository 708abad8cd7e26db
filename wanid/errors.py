"""The pack's error base and its one check for non-finite numbers. Plain Python/torch (no ComfyUI).

ComfyUI shows a failed node's error as `type(e).__module__ + "." + type(e).__qualname__` (execution.py,
full_type_name). It imports a custom node pack under its folder's *path* (custom_nodes/<pack> with dots
replaced), so the pack's exception classes would read "/home/.../custom_nodes/ComfyUI-WanIdentity.wanid.video.
VideoError". Every class deriving from WanIDError gets a clean module instead: "wanid.video" and so on, the same
however the pack was imported (by ComfyUI, by the tests as `wanid_pack`, or as the top-level package `wanid`).

Non-finite numbers (NaN, inf) are refused where they enter: a checkpoint's tensors when it is loaded, a latent or
image input, a float widget (ComfyUI's min/max checks let NaN through: every comparison with NaN is False).
"""
import math


def clean_module(module):
    """'/x/custom_nodes/ComfyUI-WanIdentity.wanid.video' or 'wanid_pack.nodes.face' -> 'wanid.video' /
    'nodes.face' relative to the pack; a name without a pack part is kept."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part in ("wanid", "nodes") and i + 1 < len(parts):
            return ".".join(parts[i:])
    return module


class WanIDError(ValueError):
    """A bad input or file; the message names the input, what is wrong and what to do."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = clean_module(cls.__module__)


WanIDError.__module__ = clean_module(WanIDError.__module__)


class NonFiniteError(WanIDError):
    """NaN or inf where a real number is needed."""


def first_line(e, limit=200):
    """The first line of an exception's message ('' for an empty one), at most `limit` characters."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""


def describe(e, limit=200):
    """'TypeName: first line' (or 'TypeName' alone when the message is empty), for wording wrapped errors."""
    line = first_line(e, limit)
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _count_bad(t):
    import torch

    if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
        return 0, 0
    if t.device.type == "meta" or bool(torch.isfinite(t).all()):  # one pass in the common case
        return 0, 0
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    return nan, inf


def check_finite(value, what, fix, error=None):
    """Raise NonFiniteError (or `error`, e.g. a file's own error class) unless `value` (a number, a tensor, or a
    dict/list/tuple of them) is all finite.

    what: the input or file part, named as the user sees it ("strength", "reference_latent",
    "Stand-In file x.ckpt"); fix: what to do. Dicts name the first bad key. Returns `value`.
    """
    bad = _first_bad(value, "")
    if bad is not None:
        where, text = bad
        raise (error or NonFiniteError)(f"{what}{where}: {text}; {fix}")
    return value


def _first_bad(value, where):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return None if math.isfinite(value) else (where, f"is {value} (not a finite number)")
    if isinstance(value, dict):
        for k in value:
            bad = _first_bad(value[k], f"{where} {k}")
            if bad is not None:
                return bad
        return None
    if isinstance(value, (list, tuple)):
        for v in value:
            bad = _first_bad(v, where)
            if bad is not None:
                return bad
        return None
    nan, inf = _count_bad(value)
    if nan or inf:
        counts = " and ".join(s for s in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if s)
        return where, f"holds {counts} of {value.numel()} values (not finite numbers)"
    return None


def check_finite_numbers(**numbers):
    """check_finite for float widget values by name: check_finite_numbers(strength=(value, "0..3"))."""
    for name, (value, allowed) in numbers.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            raise NonFiniteError(f"{name}: {value} is not a number; set a finite value ({allowed}).")
