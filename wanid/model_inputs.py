"""The one table of model inputs: every node input (of this pack, and of the ComfyUI loaders its workflows use)
whose value names a model file, with the folder of ComfyUI/models it is listed from, the file extensions, and
what the file is. Standard library only: the headless CLI reads it without torch.

Read by nodes/paths.py (the pack's folders, registered with ComfyUI), Setup Check (the folders it reports), and
`python -m wanid queue` (the folder a missing file goes in). A new model input is one row here.
"""
from dataclasses import dataclass

from .face.names import PARSER_FILE
from .lynx import files as lynx_files

# ComfyUI's own list for its model folders (folder_paths.supported_pt_extensions); ComfyUI registers those.
COMFY_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
IRSE50 = lynx_files.ARCFACE_FILE


@dataclass(frozen=True)
class ModelInput:
    input: str          # the node input ("" for a folder the nodes read without a file input)
    folder: str         # folder_paths name = the subfolder of ComfyUI/models
    extensions: tuple   # the files ComfyUI lists there
    what: str           # what the file is, for messages
    pack: bool = True   # registered by this pack (nodes/paths.py); False: one of ComfyUI's own folders
    noun: str = "model file"  # what one value names ("model folder" for Lynx)


TABLE = (
    ModelInput("unet_name", "diffusion_models", COMFY_EXTENSIONS, "the Wan diffusion model", pack=False),
    ModelInput("clip_name", "text_encoders", COMFY_EXTENSIONS, "the umT5 text encoder", pack=False),
    ModelInput("vae_name", "vae", COMFY_EXTENSIONS, "the Wan VAE", pack=False),
    ModelInput("ckpt_name", "checkpoints", COMFY_EXTENSIONS, "a checkpoint", pack=False),
    ModelInput("lora_name", "loras", COMFY_EXTENSIONS, "a LoRA", pack=False),
    ModelInput("standin_name", "stand_in", (".ckpt", ".safetensors", ".pt", ".pth"),
               "Stand-In's weights (WeChatCV/Stand-In)"),
    ModelInput("slot_id_name", "slot_id", (".safetensors",), "a Slot-ID checkpoint (python -m wanid.train)"),
    ModelInput("parser_model", "face_parsing", (".pth", ".pt", ".safetensors"),
               f"facexlib's BiSeNet face parser, {PARSER_FILE}"),
    ModelInput("lynx_name", "lynx", (".safetensors",), lynx_files.WHAT, noun="model folder"),
    ModelInput("arcface_name", "facexlib", (".pth", ".safetensors"), f"facexlib's ArcFace IR-SE50, {IRSE50}"),
    ModelInput("recognition", "facexlib", (".pth", ".safetensors"),
               f"Identity Score's face embedding, facexlib's ArcFace IR-SE50: {IRSE50}"),
    ModelInput("", "insightface", (".onnx", ".zip"),
               "insightface's antelopev2 / buffalo_l models (face detection and ArcFace), read by the face nodes' "
               "detector choice"),
)

INPUTS = {row.input: row for row in TABLE if row.input}
# Inputs whose values name files: the model inputs, and the user's uploads the shipped workflows take
# (Reference Clip Loader's video, LoadImage's image, LoadVideo's file). A workflow's file may be absent where it
# is checked.
FILE_INPUTS = frozenset(INPUTS) | {"video", "image", "file"}


def pack_folders():
    """{folder: extensions} of the folders this pack registers with ComfyUI, in table order."""
    out = {}
    for row in TABLE:
        if row.pack:
            out[row.folder] = tuple(dict.fromkeys(out.get(row.folder, ()) + row.extensions))
    return out
