"""TEST-ONLY ComfyUI nodes for the integration harness (tests/comfy_server.py). Never shipped to users.

The harness links this folder into the test server's custom_nodes/ next to the pack. Nodes:
  WanIDTestWanConditioning  seed, tokens -> CONDITIONING shaped like umT5's for Wan ([1, 512, 4096], `tokens`
                            random rows then zero padding), so prompts need no 11 GB text encoder.
  WanIDTestSaveTensor       filename_prefix, optional image / mask / latent -> one .safetensors in the output
                            folder (keys "image", "mask", "latent", "noise_mask"), listed in the history under
                            "tensors", so tests compare outputs numerically.
  WanIDTestPing             no inputs; an output node that does nothing (a cheap prompt, e.g. after /free).
  WanIDTestTensor           shape, fill, dtype, seed -> IMAGE, LATENT, CONDITIONING holding that tensor (for bad
                            inputs no stock node makes: NaN/inf, 0x0 images, 48-channel latents, empty or batch-0
                            conditioning). fill "empty_list" makes the CONDITIONING [] (no entries).
"""
import os

import torch
from safetensors.torch import save_file
from typing_extensions import override

import folder_paths
from comfy_api.latest import ComfyExtension, io

CATEGORY = "WanIdentity/testing"


class WanIDTestWanConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDTestWanConditioning",
            category=CATEGORY,
            description="Test only: random Wan text conditioning (no umT5).",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF),
                io.Int.Input("tokens", default=16, min=0, max=512),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, seed, tokens) -> io.NodeOutput:
        # umT5 output for Wan: padded to 512 rows, padding rows zeroed (comfy/text_encoders/wan.py)
        cond = torch.zeros(1, 512, 4096)
        gen = torch.Generator().manual_seed(seed)
        cond[:, :tokens] = torch.randn(1, tokens, 4096, generator=gen)
        return io.NodeOutput([[cond, {}]])


class WanIDTestSaveTensor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDTestSaveTensor",
            category=CATEGORY,
            description="Test only: save tensors as .safetensors in the output folder.",
            inputs=[
                io.String.Input("filename_prefix", default="wanid_test/tensor"),
                io.Image.Input("image", optional=True),
                io.Mask.Input("mask", optional=True),
                io.Latent.Input("latent", optional=True),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, filename_prefix, image=None, mask=None, latent=None) -> io.NodeOutput:
        out_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        tensors = {"image": image, "mask": mask}
        if latent is not None:
            tensors["latent"] = latent["samples"]
            tensors["noise_mask"] = latent.get("noise_mask")
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items() if v is not None}
        file = f"{name}_{counter:05}_.safetensors"
        save_file(tensors, os.path.join(folder, file))
        return io.NodeOutput(ui={"tensors": [{"filename": file, "subfolder": subfolder, "type": "output"}]})


class WanIDTestPing(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDTestPing",
            category=CATEGORY,
            description="Test only: does nothing.",
            inputs=[],
            outputs=[],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # never cached: every ping runs

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput()


class WanIDTestTensor(io.ComfyNode):
    FILLS = ("randn", "rand", "zeros", "nan", "inf", "one_nan", "empty_list")
    DTYPES = ("float32", "float16", "bfloat16", "int32", "uint8")

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDTestTensor",
            category=CATEGORY,
            description="Test only: one tensor of any shape, fill and dtype as IMAGE, LATENT and CONDITIONING.",
            inputs=[
                io.String.Input("shape", default="1,16,1,8,8"),
                io.Combo.Input("fill", options=list(cls.FILLS), default="randn"),
                io.Combo.Input("dtype", options=list(cls.DTYPES), default="float32"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF),
            ],
            outputs=[io.Image.Output(), io.Latent.Output(), io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, shape, fill, dtype, seed) -> io.NodeOutput:
        dims = [int(x) for x in shape.split(",") if x.strip()]
        g = torch.Generator().manual_seed(seed)
        if fill == "rand":
            t = torch.rand(dims, generator=g)
        elif fill in ("zeros", "empty_list"):
            t = torch.zeros(dims)
        else:
            t = torch.randn(dims, generator=g)
        if fill == "nan":
            t = torch.full(dims, float("nan"))
        elif fill == "inf":
            t = torch.full(dims, float("inf"))
        elif fill == "one_nan" and t.numel():
            t.view(-1)[t.numel() // 2] = float("nan")
        t = t.to(getattr(torch, dtype))
        cond = [] if fill == "empty_list" else [[t, {}]]
        return io.NodeOutput(t, {"samples": t}, cond)


class WanIDTestExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [WanIDTestWanConditioning, WanIDTestSaveTensor, WanIDTestPing, WanIDTestTensor]


async def comfy_entrypoint() -> WanIDTestExtension:
    return WanIDTestExtension()
