"""Model folders of the pack, registered with ComfyUI's folder_paths (extra_model_paths.yaml works too)."""
import os

import folder_paths

# name -> (subfolder of models/, extensions)
MODEL_FOLDERS = {
    "stand_in": ("stand_in", {".ckpt", ".safetensors", ".pt", ".pth"}),
    "slot_id": ("slot_id", {".safetensors"}),
    "face_parsing": ("face_parsing", {".pth", ".pt", ".safetensors"}),
    "insightface": ("insightface", {".onnx", ".zip"}),
    "lynx": ("lynx", {".safetensors"}),            # one folder per Lynx release: lynx_full/, lynx_lite/
    "facexlib": ("facexlib", {".pth", ".safetensors"}),  # recognition_arcface_ir_se50.pth (Lynx's ArcFace)
}


def register_model_folders():
    for name, (sub, exts) in MODEL_FOLDERS.items():
        path = os.path.join(folder_paths.models_dir, sub)
        if name in folder_paths.folder_names_and_paths:
            known, old_exts = folder_paths.folder_names_and_paths[name]
            if path not in known:
                known.append(path)
            old_exts.update(exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], set(exts))


def model_dir(name):
    """The first folder registered for `name` (where the README tells users to put the files)."""
    return folder_paths.get_folder_paths(name)[0]
