"""What a Lynx folder is, by its file names alone. Standard library only: the headless CLI, Setup Check and the
nodes ask it without torch (the tensors themselves are read and checked by wanid.lynx.checkpoint).

ByteDance/lynx on Hugging Face ships one folder per release in models/lynx: lynx_full/ (resampler, ID layers and
the Ref adapter's layers) and lynx_lite/ (resampler and ID layers)."""
import os

RESAMPLER, IP_LAYERS, REF_LAYERS = "resampler.safetensors", "ip_layers.safetensors", "ref_layers.safetensors"
FILES = (RESAMPLER, IP_LAYERS, REF_LAYERS)
REQUIRED = (RESAMPLER, IP_LAYERS)  # every release; REF_LAYERS is lynx_full's Ref adapter
FULL, LITE = "lynx_full", "lynx_lite"
ARCFACE_FILE = "recognition_arcface_ir_se50.pth"  # facexlib's IR-SE50, in models/facexlib: Lynx's face embedding
DOWNLOAD = f"the {FULL} (or {LITE}) folder of ByteDance/lynx on Hugging Face"
WHAT = f"a Lynx folder: {FULL} ({', '.join(FILES)}) or {LITE} ({', '.join(REQUIRED)}) from ByteDance/lynx"


def folders(file_names):
    """The Lynx folders among the file names of models/lynx as ComfyUI lists them (relative paths, either
    separator): each folder holding resampler.safetensors, '.' for models/lynx itself; sorted, once each."""
    found = set()
    for name in file_names:
        name = str(name).replace(os.sep, "/")
        folder, _, base = name.rpartition("/")
        if base == RESAMPLER:
            found.add(folder or ".")
    return sorted(found)
