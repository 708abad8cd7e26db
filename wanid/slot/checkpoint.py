"""The Slot-ID checkpoint: one .safetensors file.

    encoder.<name>                                              SlotEncoder state (float32)
    diffusion_model.blocks.{i}.cross_attn.{q,k,v,o}.lora_down.weight   [rank, dim]
    diffusion_model.blocks.{i}.cross_attn.{q,k,v,o}.lora_up.weight     [dim, rank]
    diffusion_model.blocks.{i}.cross_attn.{q,k,v,o}.alpha              scalar (ComfyUI scales by alpha / rank)
    metadata: format "slot-id", version "1", config (SlotIDConfig JSON), backbone, dim (the DiT width)

The LoRA keys are ComfyUI's own ("regular" lora_up/lora_down + alpha on the diffusion model's module names, as
comfy.lora.model_lora_keys_unet maps them), so ComfyUI's LoRA machinery patches the weights: fp8 storage, lowvram
offload and other LoRAs stack as usual. A fresh checkpoint has lora_up = 0: it leaves the DiT unchanged.
"""
import math
import os
import re
from dataclasses import dataclass, field

import torch

from ..errors import WanIDError, check_finite, describe
from .encoder import SlotEncoder, SlotIDConfig

FORMAT = "slot-id"
VERSION = "1"
ENCODER_PREFIX = "encoder."
PROJECTIONS = ("q", "k", "v", "o")
LORA_RE = re.compile(r"^diffusion_model\.blocks\.(\d+)\.cross_attn\.([qkvo])\.(lora_down\.weight|lora_up\.weight|alpha)$")

# Known Wan backbones: DiT width, blocks, VAE latent channels.
BACKBONES = {
    "wan2.1-t2v-14b": dict(dim=5120, num_blocks=40, latent_channels=16),
    "wan2.1-t2v-1.3b": dict(dim=1536, num_blocks=30, latent_channels=16),
    "wan2.2-t2v-a14b": dict(dim=5120, num_blocks=40, latent_channels=16),
    "wan2.2-ti2v-5b": dict(dim=3072, num_blocks=30, latent_channels=48),
}
DEFAULT_BACKBONE_FOR_DIM = {5120: "wan2.1-t2v-14b", 1536: "wan2.1-t2v-1.3b", 3072: "wan2.2-ti2v-5b"}


class SlotIDCheckpointError(WanIDError):
    """A Slot-ID file that is not readable, not complete, or not consistent with its own config."""


class SlotIDModelMismatchError(SlotIDCheckpointError):
    """A valid Slot-ID file made for another DiT (width or number of blocks)."""


def lora_key(block, proj, part):
    return f"diffusion_model.blocks.{block}.cross_attn.{proj}.{part}"


@dataclass
class SlotIDCheckpoint:
    config: SlotIDConfig
    encoder_state: dict
    lora: dict  # ComfyUI LoRA keys -> tensors
    backbone: str
    dim: int
    num_blocks: int
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def build_encoder(self, device="cpu", dtype=torch.float32):
        encoder = SlotEncoder(self.config)
        encoder.load_state_dict(self.encoder_state, strict=True)
        return encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def check_against(self, dim, num_blocks, model_name="this model"):
        """Raise SlotIDModelMismatchError when the LoRA does not fit a DiT of width `dim` with `num_blocks` blocks."""
        hint = (f"This file was made for {self.backbone or 'an unnamed backbone'} (dim {self.dim}, {self.num_blocks} "
                f"blocks); use a Slot-ID checkpoint made for this Wan model (python -m wanid.slot.init_checkpoint "
                f"--dim {dim} writes an untrained one).")
        if dim != self.dim:
            raise SlotIDModelMismatchError(f"Slot-ID {self.source}: model dim {dim} != checkpoint dim {self.dim}: "
                                           f"its cross-attention LoRA does not fit {model_name}. {hint}")
        if num_blocks != self.num_blocks:
            raise SlotIDModelMismatchError(f"Slot-ID {self.source}: {model_name} has {num_blocks} blocks, the "
                                           f"checkpoint's LoRA covers {self.num_blocks}. {hint}")


def fresh_lora(dim, num_blocks, rank, alpha, generator=None):
    """lora_down as PEFT initialises it (kaiming-uniform, a=sqrt(5): U(+-1/sqrt(dim))), lora_up zero."""
    out = {}
    bound = 1.0 / math.sqrt(dim)
    for i in range(num_blocks):
        for p in PROJECTIONS:
            down = torch.rand(rank, dim, generator=generator) * (2 * bound) - bound
            out[lora_key(i, p, "lora_down.weight")] = down
            out[lora_key(i, p, "lora_up.weight")] = torch.zeros(dim, rank)
            out[lora_key(i, p, "alpha")] = torch.tensor(float(alpha))
    return out


def fresh_checkpoint(dim, num_blocks, config=None, backbone="", seed=0):
    """An untrained checkpoint (what training starts from): random encoder, gate 0, LoRA up 0."""
    config = config or SlotIDConfig()
    config.check()
    # torch's modules initialise from the global generator: seed it for them only, the caller's RNG state is put back
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = SlotEncoder(config)
    gen = torch.Generator().manual_seed(seed + 1)
    lora = fresh_lora(dim, num_blocks, config.lora_rank, config.lora_alpha, gen)
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    return SlotIDCheckpoint(config=config, encoder_state=state, lora=lora, backbone=backbone, dim=dim,
                            num_blocks=num_blocks)


def save_checkpoint(ckpt: SlotIDCheckpoint, path):
    from safetensors.torch import save_file

    tensors = {ENCODER_PREFIX + k: v.detach().cpu().contiguous() for k, v in ckpt.encoder_state.items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in ckpt.lora.items()})
    metadata = {"format": FORMAT, "version": VERSION, "config": ckpt.config.to_json(), "backbone": ckpt.backbone,
                "dim": str(ckpt.dim), "num_blocks": str(ckpt.num_blocks)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_file(path):
    """(tensors, metadata) of a .safetensors file, or a SlotIDCheckpointError saying why not."""
    from safetensors import safe_open

    name = os.path.basename(str(path))
    if not os.path.isfile(path):
        raise SlotIDCheckpointError(f"Slot-ID file not found: {path}. Put the checkpoint in models/slot_id.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # not a safetensors file, truncated, ...
        raise SlotIDCheckpointError(f"Slot-ID file {name} is unreadable ({describe(e)}). Slot-ID checkpoints are "
                                    f".safetensors files; download or export it again.") from e
    return tensors, metadata


def load_checkpoint(path):
    tensors, metadata = read_file(path)
    return parse_checkpoint(tensors, metadata, source=os.path.basename(str(path)))


def parse_checkpoint(tensors, metadata, source="checkpoint"):
    """Check everything against the file's own config; return a SlotIDCheckpoint (float32 tensors)."""
    def fail(msg):
        raise SlotIDCheckpointError(f"Slot-ID {source}: {msg}")

    if metadata.get("format") != FORMAT:
        fail(f"metadata format is {metadata.get('format')!r}, not {FORMAT!r}: this is not a Slot-ID checkpoint "
             f"(a plain LoRA goes into LoraLoaderModelOnly, a Stand-In file into models/stand_in).")
    if metadata.get("version") != VERSION:
        fail(f"format version {metadata.get('version')!r}; this pack reads version {VERSION}. Update the pack.")
    try:
        config = SlotIDConfig.from_json(metadata.get("config", ""))
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        fail(f"metadata config is invalid: {e}")
    try:
        dim = int(metadata.get("dim", ""))
    except ValueError:
        fail(f"metadata dim {metadata.get('dim')!r} is not an integer")
    backbone = metadata.get("backbone", "")

    encoder_state = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
    lora = {k: v for k, v in tensors.items() if not k.startswith(ENCODER_PREFIX)}

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SlotEncoder(config).state_dict().items()}
    missing = sorted(set(expected) - set(encoder_state))
    extra = sorted(set(encoder_state) - set(expected))
    if missing:
        fail(f"encoder tensor {ENCODER_PREFIX}{missing[0]} is missing ({len(missing)} missing in all); the file is "
             f"incomplete or was written by another version.")
    if extra:
        fail(f"unexpected encoder tensor {ENCODER_PREFIX}{extra[0]} ({len(extra)} in all) for the config in the file.")
    for k, shape in expected.items():
        if tuple(encoder_state[k].shape) != shape:
            fail(f"{ENCODER_PREFIX}{k} has shape {list(encoder_state[k].shape)}, its config needs {list(shape)}.")

    blocks = set()
    for k, v in lora.items():
        m = LORA_RE.match(k)
        if m is None:
            fail(f"unexpected tensor {k}: neither {ENCODER_PREFIX}* nor a cross-attention LoRA key.")
        blocks.add(int(m.group(1)))
    num_blocks = max(blocks) + 1 if blocks else 0
    if num_blocks == 0:
        fail("no cross-attention LoRA tensors.")
    want_nb = metadata.get("num_blocks")
    if want_nb is not None and want_nb != str(num_blocks):
        fail(f"metadata says {want_nb} blocks, the LoRA covers {num_blocks}.")
    r = config.lora_rank
    for i in range(num_blocks):
        for p in PROJECTIONS:
            for part, shape in (("lora_down.weight", (r, dim)), ("lora_up.weight", (dim, r)), ("alpha", ())):
                k = lora_key(i, p, part)
                if k not in lora:
                    fail(f"LoRA tensor {k} is missing.")
                if tuple(lora[k].shape) != shape:
                    fail(f"{k} has shape {list(lora[k].shape)}, but dim {dim} and rank {r} need {list(shape)}.")

    def f32(d):
        return {k: (v.float() if v.is_floating_point() else v) for k, v in d.items()}

    for part, tensors_ in (("encoder weights", encoder_state), ("LoRA", lora)):
        check_finite(tensors_, f"Slot-ID {source}: {part}",
                     "the file is damaged or was saved from a diverged training run; export it again from an "
                     "earlier training step")

    return SlotIDCheckpoint(config=config, encoder_state=f32(encoder_state), lora=f32(lora), backbone=backbone,
                            dim=dim, num_blocks=num_blocks, source=source, metadata=dict(metadata))
