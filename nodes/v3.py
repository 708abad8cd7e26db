"""ComfyUI's V3 node API, pinned to a versioned module: comfy_api.v0_0_2 exists from 0.3.6x to 0.33 (and is what
`latest` was when the pack was written), while `latest` itself is marked unstable and has dropped names before
(`comfy_io`). Every node module imports io/ui from here."""
try:
    from comfy_api.v0_0_2 import ComfyExtension, io, ui
except ImportError:  # a ComfyUI that retired v0_0_2: the newest API, which the pack also tests
    from comfy_api.latest import ComfyExtension, io, ui

__all__ = ["ComfyExtension", "io", "ui"]
