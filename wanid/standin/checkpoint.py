"""Reading Stand-In checkpoints without executing pickled code.

Official files hold `blocks.{i}.self_attn.{q,k,v}_loras.{down,up}.weight` for every block (rank 128 at 14B),
sometimes under a "state_dict" key, sometimes with a "diffusion_model." prefix; .ckpt/.pt/.pth are torch
zip-pickles read with weights_only=True, .safetensors are read directly.
"""
import os
import re
from dataclasses import dataclass

import torch

from ..errors import WanIDError, check_finite
from ..tensor_file import natural_key, read_tensor_file

KEY_RE = re.compile(r"^blocks\.(\d+)\.self_attn\.([qkv])_loras\.(down|up)\.weight$")
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.", "model.")


class StandInCheckpointError(WanIDError):
    pass


@dataclass
class StandInWeights:
    """The LoRA tensors of one Stand-In file (fp32, CPU), keyed like the official module tree."""
    state_dict: dict
    num_blocks: int
    dim: int
    rank: int
    source: str

    def check_against(self, num_blocks, dim, model_name="this model"):
        """Raise a StandInCheckpointError naming the first thing that does not fit a model of that size."""
        if self.num_blocks != num_blocks:
            raise StandInCheckpointError(
                f"Stand-In file {self.source} has LoRA for {self.num_blocks} blocks, but {model_name} has "
                f"{num_blocks}. Use the Stand-In file made for this Wan model (14B: 40 blocks).")
        for key in sorted(self.state_dict, key=natural_key):
            want = (self.rank, dim) if key.endswith("down.weight") else (dim, self.rank)
            if tuple(self.state_dict[key].shape) != want:
                raise StandInCheckpointError(
                    f"Stand-In file {self.source}: {key} has shape {list(self.state_dict[key].shape)}, but {model_name} "
                    f"needs {list(want)}. The official Stand-In files are for Wan 2.1 14B / Wan 2.2 A14B "
                    f"(dim 5120); use a file made for this model.")



def read_tensors(path, mmap=False):
    """The tensor dict of a .safetensors or torch file, never unpickling arbitrary objects. mmap: map a torch zip
    file's storages instead of reading them (Setup Check; the node reads them, so a file replaced later cannot
    pull pages away under a loaded model)."""
    if not os.path.isfile(path):
        raise StandInCheckpointError(f"Stand-In file not found: {path}. Put the official .ckpt in models/stand_in.")
    return read_tensor_file(path, "Stand-In file",
                            "Download it again (Stand-In_wan2.1_T2V_14B.ckpt, or the Wan 2.2 high/low pair).",
                            error=StandInCheckpointError, mmap=mmap)


def normalize_keys(raw, source):
    """Unwrap a "state_dict" wrapper and strip known prefixes; fail on anything that is not a Stand-In LoRA tensor."""
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(sd, dict):
        raise StandInCheckpointError(f"Stand-In file {source} holds a {type(sd).__name__}, not a dict of tensors.")
    out = {}
    for key, value in sd.items():
        short = key
        for prefix in PREFIXES:
            if short.startswith(prefix):
                short = short[len(prefix):]
                break
        if not KEY_RE.match(short):
            raise StandInCheckpointError(
                f"Stand-In file {source}: unexpected key {key!r} (expected blocks.N.self_attn.q_loras.down.weight ...). "
                f"This is not a Stand-In checkpoint.")
        if not isinstance(value, torch.Tensor):
            raise StandInCheckpointError(f"Stand-In file {source}: {key} is not a tensor.")
        if not value.is_floating_point():
            raise StandInCheckpointError(
                f"Stand-In file {source}: {key} holds {str(value.dtype).replace('torch.', '')} numbers, not "
                f"floating-point weights: this is not a Stand-In checkpoint (or a damaged export). Download it again.")
        out[short] = value.float()
    if not out:
        raise StandInCheckpointError(f"Stand-In file {source} holds no tensors.")
    return out


def parse_state_dict(sd, source="<memory>"):
    """Check completeness and consistency, read rank/dim/blocks from the tensors themselves."""
    sd = normalize_keys(sd, source)
    blocks = sorted({int(KEY_RE.match(k).group(1)) for k in sd})
    num_blocks = blocks[-1] + 1
    for i in range(num_blocks):
        for proj in "qkv":
            for part in ("down", "up"):
                key = f"blocks.{i}.self_attn.{proj}_loras.{part}.weight"
                if key not in sd:
                    raise StandInCheckpointError(
                        f"Stand-In file {source} is incomplete: {key} is missing. Download it again.")
    down = sd["blocks.0.self_attn.q_loras.down.weight"]
    if down.ndim != 2:
        raise StandInCheckpointError(f"Stand-In file {source}: LoRA weights must be 2-D, got {list(down.shape)}.")
    rank, dim = down.shape
    weights = StandInWeights(sd, num_blocks, dim, rank, source)
    weights.check_against(num_blocks, dim, "its own block 0")
    return weights


def load_standin(path, mmap=False):
    """The one loader and validator of a Stand-In file (the node and Setup Check both use it): readable, only
    tensors, complete, consistent shapes, floating point and finite."""
    name = os.path.basename(path)
    weights = parse_state_dict(read_tensors(path, mmap=mmap), name)
    check_finite(weights.state_dict, f"Stand-In file {name}",
                 "the file is damaged (or was saved from a diverged training run); download it again")
    return weights
