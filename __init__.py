"""ComfyUI-WanIdentity: identity-preserving Wan video (Stand-In, Slot-ID) on ComfyUI's native Wan model.

ComfyUI imports this file from custom_nodes/. Nodes are declared with the V3 schema and registered through
`comfy_entrypoint`; the front-end extensions live in js/.
"""
import importlib.util

WEB_DIRECTORY = "./js"

# Outside ComfyUI (pytest collecting the repo, `python -m wanid ...`) there is nothing to register.
if importlib.util.find_spec("comfy_api") is not None:
    from typing_extensions import override

    from .nodes.v3 import ComfyExtension, io

    from .nodes import all_nodes

    class WanIdentityExtension(ComfyExtension):
        @override
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return all_nodes()

    async def comfy_entrypoint() -> WanIdentityExtension:
        return WanIdentityExtension()
