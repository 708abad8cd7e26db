"""Reading tensor files without executing pickled code."""
import os
import re

import torch


def load_tensor_file(path, mmap=False):
    """The contents of a .safetensors file, or of a torch file read with weights_only=True: only tensors and
    plain containers come out; a pickle that wants to build other objects raises instead of running."""
    path = os.fspath(path)
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path, device="cpu")
    if mmap:
        try:  # a torch zip file maps its storages; a legacy (non-zip) file cannot be mapped and is read
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def refused_pickle(error):
    """For a failed load_tensor_file: None when the file is damaged or foreign, else what the refused pickle asked
    for ('builtins.print', 'posix.system', or '' when torch does not say). torch's weights_only message mentions
    weights_only for both, so they are told apart by the unpickler's own words."""
    text = str(error)  # "Unsupported global: GLOBAL builtins.print ...", "unsupported GLOBAL posix.system whose
    if "unsupported global" not in text.lower() and "unsupported class" not in text.lower():  # module is blocked"
        return None
    m = _GLOBAL.search(text)
    return m.group(1) if m else ""


def pickle_refusal(what, name, called, fix, instead=None):
    """The pack's one wording for a file refused because it holds pickled code. Never torch's own text: it goes on
    to explain how to load the file unsafely, which read out of context is advice to do so."""
    code = f" (loading it would call {called})" if called else ""
    instead = instead or "the official file (or a .safetensors version of it), which holds only tensors"
    return (f"{what} {name} is refused: it holds pickled code, not only tensors{code}, and this pack never runs "
            f"code from a model file. Use {instead}. {fix}")


def read_tensor_file(path, what, fix, error=ValueError, mmap=False, instead=None):
    """The one reader of the pack's tensor files (Stand-In, BiSeNet, Lynx, IR-SE50, training state):
    load_tensor_file, with one wording for what goes wrong. what: the file as the user knows it ("Stand-In file"),
    followed by its name; fix: what to do; instead: what to use in place of a file holding pickled code (default:
    the official file or a .safetensors version). A 0-byte file, a file with pickled code (refused, never run)
    and a damaged or foreign file raise `error` saying which; a missing file is the caller's to word (it knows
    where the file belongs)."""
    name = os.path.basename(os.fspath(path))
    if os.path.getsize(path) == 0:
        raise error(f"{what} {name} is empty (0 bytes): a download or copy that did not finish. {fix}")
    try:
        return load_tensor_file(path, mmap=mmap)
    except Exception as e:  # truncated zip, wrong format, or a pickle that wants to run code
        called = refused_pickle(e)
        if called is not None:
            raise error(pickle_refusal(what, name, called, fix, instead)) from None
        # chained only when the cause holds no weights_only advice (the server log prints the chain)
        raise error(f"{what} {name} is unreadable ({load_failure(e)}). {fix}") from (
            None if "weights_only" in str(e) else e)


def load_failure(error):
    """'TypeName: reason' for a failed load, without torch's weights_only preamble, which explains how to load the
    file unsafely: only the unpickler's own reason ("Unsupported operand 110") is kept."""
    from .errors import describe
    text = str(error)
    if "weights_only" not in text:
        return describe(error)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    reason = m.group(1) if m else next((ln for ln in text.splitlines()[1:] if ln.strip() and not any(
        w in ln for w in ("weights_only", "torch.load", "Please file"))), "not a file of tensors")
    return f"{type(error).__name__}: {' '.join(reason.split())[:200]}"


def natural_key(key):
    """Sort key ordering state-dict keys as people read them: blocks.2 before blocks.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]
