"""The cross-attention LoRA as trainable parameters, for training only.

ComfyUI's LoRA patches are weight patches (W + alpha/rank * up @ down, merged at load): not trainable. Here the
same low-rank term is added to the OUTPUT of each frozen cross-attention projection with a forward hook:

    y = Linear(x) + (alpha / rank) * (x @ down^T) @ up^T  ==  x @ (W + alpha/rank * up @ down)^T + b

so training sees exactly what ComfyUI's LoRA machinery computes at inference. Hooks leave the module tree and its
key names untouched (fp8 casting, lowvram offload and the block-replace hooks keep working) and are removed
afterwards. Parameters are float32 masters; the term is computed in the activation dtype (bf16 under --bf16).
Export/import use the checkpoint's ComfyUI key names (wanid.slot.checkpoint.lora_key).
"""
import torch
from torch import nn

from ..slot.checkpoint import PROJECTIONS, lora_key


class CrossAttnLoRA(nn.Module):
    def __init__(self, num_blocks, dim, rank, alpha):
        super().__init__()
        self.num_blocks, self.dim, self.rank, self.alpha = num_blocks, dim, rank, float(alpha)
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        for i in range(num_blocks):
            for p in PROJECTIONS:
                self.down[f"{i}_{p}"] = nn.Parameter(torch.zeros(rank, dim))
                self.up[f"{i}_{p}"] = nn.Parameter(torch.zeros(dim, rank))
        self._handles = []

    @property
    def scale(self):
        return self.alpha / self.rank

    def load_checkpoint_lora(self, lora):
        """Copy the tensors of a checkpoint's LoRA dict (ComfyUI keys) into the parameters."""
        with torch.no_grad():
            for i in range(self.num_blocks):
                for p in PROJECTIONS:
                    self.down[f"{i}_{p}"].copy_(lora[lora_key(i, p, "lora_down.weight")])
                    self.up[f"{i}_{p}"].copy_(lora[lora_key(i, p, "lora_up.weight")])
                    alpha = float(lora[lora_key(i, p, "alpha")])
                    if abs(alpha - self.alpha) > 1e-6:
                        raise ValueError(f"block {i} {p}: alpha {alpha} differs from the config's {self.alpha}")

    def export(self):
        """{ComfyUI LoRA key: float32 CPU tensor}, the format of wanid.slot.checkpoint."""
        out = {}
        for i in range(self.num_blocks):
            for p in PROJECTIONS:
                out[lora_key(i, p, "lora_down.weight")] = self.down[f"{i}_{p}"].detach().float().cpu().clone()
                out[lora_key(i, p, "lora_up.weight")] = self.up[f"{i}_{p}"].detach().float().cpu().clone()
                out[lora_key(i, p, "alpha")] = torch.tensor(self.alpha)
        return out

    def attach(self, diffusion_model):
        """Hook every blocks[i].cross_attn.{q,k,v,o} of the (frozen) Wan DiT."""
        self.detach()
        blocks = diffusion_model.blocks
        if len(blocks) != self.num_blocks:
            raise ValueError(f"the DiT has {len(blocks)} blocks, the LoRA {self.num_blocks}")
        for i, block in enumerate(blocks):
            for p in PROJECTIONS:
                module = getattr(block.cross_attn, p)
                self._handles.append(module.register_forward_hook(self._hook(f"{i}_{p}")))
        return self

    def detach(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name):
        def hook(module, args, output):
            x = args[0]
            down = self.down[name].to(device=x.device, dtype=x.dtype)
            up = self.up[name].to(device=x.device, dtype=x.dtype)
            return output + (x @ down.t() @ up.t()) * self.scale
        return hook
