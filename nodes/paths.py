"""Model folders of the pack, registered with ComfyUI's folder_paths (extra_model_paths.yaml works too). Which
folders and extensions: the table of model inputs (wanid/model_inputs.py)."""
import os

import folder_paths

from ..wanid.model_inputs import pack_folders


def register_model_folders():
    for name, exts in pack_folders().items():
        path = os.path.join(folder_paths.models_dir, name)
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
