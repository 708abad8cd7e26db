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


def load_error_kind(error):
    """What a failed load_tensor_file means for a user: refused pickled code, or a damaged/foreign file. torch's
    weights_only message mentions weights_only for both, so tell them apart by the unpickler's own words."""
    text = str(error).lower()  # "Unsupported global: GLOBAL builtins.print", "unsupported GLOBAL posix.system whose
    if "unsupported global" in text or "unsupported class" in text:  # module posix is blocked"
        return "refused: it holds pickled code, not only tensors"
    return "unreadable"


def read_tensor_file(path, what, fix, error=ValueError, mmap=False):
    """The one reader of the pack's tensor files (Stand-In, BiSeNet, training state): load_tensor_file, with one
    wording for what goes wrong. what: the file as the user knows it ("Stand-In file"), followed by its name; fix:
    what to do. A 0-byte file, a file with pickled code (refused, never run) and a damaged or foreign file raise
    `error` saying which; a missing file is the caller's to word (it knows where the file belongs)."""
    name = os.path.basename(os.fspath(path))
    if os.path.getsize(path) == 0:
        raise error(f"{what} {name} is empty (0 bytes): a download or copy that did not finish. {fix}")
    try:
        return load_tensor_file(path, mmap=mmap)
    except Exception as e:  # truncated zip, wrong format, or a pickle that wants to run code
        from .errors import describe
        raise error(f"{what} {name} is {load_error_kind(e)} ({describe(e)}). {fix}") from e


def natural_key(key):
    """Sort key ordering state-dict keys as people read them: blocks.2 before blocks.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]
