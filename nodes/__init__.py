"""ComfyUI glue: one small module per node family. Each module exposes NODES (a list of io.ComfyNode classes).

A family whose optional dependency is missing (say insightface) must not take the others down with it: its
import error is logged with what to install, and the rest of the pack still registers.
"""
import importlib
import logging

from . import paths

FAMILIES = (
    "standin",
    "lynx",
    "reference_clip",
    "face",
    "face_swap",
    "vace",
    "slot_id",
    "identity_score",
    "setup_check",
)


def all_nodes():
    paths.register_model_folders()
    found = []
    for name in FAMILIES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"nodes.{name}"):
                continue  # family not written yet
            logging.error("[WanIdentity] %s nodes disabled: %s. Install the pack's requirements.txt "
                          "into ComfyUI's Python (pip install -r requirements.txt).", name, e)
            continue
        for node in module.NODES:
            try:
                node.GET_SCHEMA()  # a broken schema would make ComfyUI drop the whole pack
            except Exception as e:
                logging.error("[WanIdentity] node %s disabled: invalid schema: %s", node.__name__, e)
                continue
            found.append(node)
    return found
