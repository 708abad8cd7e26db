"""ComfyUI-WanIdentity: identity-preserving Wan video (Stand-In, Slot-ID) on ComfyUI's native Wan model.

ComfyUI imports this file from custom_nodes/. Nodes are declared with the V3 schema and registered through
`comfy_entrypoint`; the front-end extensions live in js/.
"""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .nodes import all_nodes

WEB_DIRECTORY = "./js"


class WanIdentityExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()


async def comfy_entrypoint() -> WanIdentityExtension:
    return WanIdentityExtension()
