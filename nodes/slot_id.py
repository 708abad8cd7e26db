"""Slot-ID nodes: load a checkpoint (encoder + cross-attention LoRA), encode a reference clip into identity tokens,
prepend them to Wan's text conditioning. The math lives in wanid/slot (plain torch)."""
import logging
import os
from dataclasses import dataclass

import torch

import comfy.latent_formats
import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.utils
import folder_paths
from .v3 import io, ui

from ..wanid.errors import check_finite_numbers
from ..wanid.slot import crop_latents
from ..wanid.slot.checkpoint import SlotIDCheckpoint, load_checkpoint
from ..wanid.slot.encoder import IdentityTokens, clip_inputs
from ..wanid.slot.routing_image import routing_image
from .cache import LoadedCache, file_key, file_stamp
from .types import FaceClipType, IdentityTokensType, SlotIDModelType
from .wan import wan_model_of


# Normalised VAE latents (what the DiT sees, and what training caches): by latent channel count.
LATENT_FORMATS = {16: comfy.latent_formats.Wan21, 48: comfy.latent_formats.Wan22}

_loaded = LoadedCache(1)  # one SlotIDModel


@dataclass
class SlotIDModel:
    """SLOT_ID_MODEL: the checkpoint plus its encoder in a ModelPatcher (ComfyUI loads and offloads it)."""
    checkpoint: SlotIDCheckpoint
    patcher: object

    @property
    def config(self):
        return self.checkpoint.config

    @property
    def encoder(self):
        return self.patcher.model


def load_slot_id(name):
    path = folder_paths.get_full_path("slot_id", name) if name else None
    if path is None:
        raise FileNotFoundError(
            f"slot_id_name: {name!r} is not in models/slot_id. Put a Slot-ID .safetensors in "
            f"{os.path.join(folder_paths.models_dir, 'slot_id')} (python -m wanid.slot.init_checkpoint writes an "
            f"untrained one) and refresh.")
    def load():
        ckpt = load_checkpoint(path)
        patcher = comfy.model_patcher.ModelPatcher(ckpt.build_encoder(),
                                                   load_device=comfy.model_management.get_torch_device(),
                                                   offload_device=comfy.model_management.unet_offload_device())
        return SlotIDModel(ckpt, patcher)
    return _loaded.get(file_key(path), load)


class WanIDSlotIDLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDSlotIDLoader",
            display_name="Slot-ID Loader",
            category="WanIdentity",
            description="Loads a Slot-ID checkpoint: the identity encoder, and its cross-attention LoRA applied to "
                        "the Wan model through ComfyUI's LoRA machinery.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("slot_id_name", options=folder_paths.get_filename_list("slot_id"),
                               tooltip="Slot-ID checkpoint in models/slot_id"),
                io.Float.Input("lora_strength", default=1.0, min=-2.0, max=2.0, step=0.05,
                               tooltip="Strength of the cross-attention LoRA (0: the model unchanged)"),
            ],
            outputs=[io.Model.Output(), SlotIDModelType.Output(display_name="slot_id")],
        )

    @classmethod
    def fingerprint_inputs(cls, slot_id_name=None, **kwargs):
        return file_stamp("slot_id", slot_id_name)  # a file replaced under the same name is read again

    @classmethod
    def execute(cls, model, slot_id_name, lora_strength=1.0) -> io.NodeOutput:
        check_finite_numbers(lora_strength=(lora_strength, "-2 to 2; 1 = as trained, 0 = model unchanged"))
        slot = load_slot_id(slot_id_name)
        ckpt = slot.checkpoint
        dm = wan_model_of(model, "Slot-ID")
        dim, blocks, text_dim = int(dm.dim), len(dm.blocks), int(getattr(dm, "text_dim", 4096))
        ckpt.check_against(dim, blocks, model_name=f"this model ({type(model.model).__name__})")
        if text_dim != ckpt.config.text_dim:
            raise ValueError(f"model: its text embedding reads {text_dim}-d rows, the Slot-ID tokens are "
                             f"{ckpt.config.text_dim}-d; use a checkpoint made for this Wan model.")
        return io.NodeOutput(apply_lora(model, ckpt, lora_strength), slot)


def apply_lora(model, ckpt, strength):
    """A clone of `model` with the checkpoint's cross-attention LoRA as weight patches (the input is untouched)."""
    if strength == 0:
        return model
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    targets = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in ckpt.lora})
    missing = [t for t in targets if t not in key_map]
    if missing:
        raise ValueError(f"model: it has no weight {missing[0]}.weight, which the Slot-ID LoRA patches "
                         f"({len(missing)} such); use a Slot-ID checkpoint made for this Wan model.")
    patched, _ = comfy.sd.load_lora_for_models(model, None, ckpt.lora, strength, 0)
    return patched


def encode_crops(vae, crops, valid, channels):
    """The valid crops' normalised latents [T, C, h, w] (wanid.slot.crop_latents, what training caches too);
    invalid frames are zeros."""
    latent_format = LATENT_FORMATS.get(channels)
    if latent_format is None:
        raise ValueError(f"slot_id: its config has latent_channels={channels}; Wan VAEs give 16 (Wan 2.1) or 48 "
                         f"(Wan 2.2). Use a checkpoint written for one of them.")
    pbar = comfy.utils.ProgressBar(int(valid.sum()))
    return crop_latents.encode_crops(vae.encode, latent_format().process_in, crops, valid, channels,
                                     on_progress=lambda: pbar.update(1))


class WanIDSlotEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDSlotEncoder",
            display_name="Slot-ID Encoder",
            category="WanIdentity",
            description="Encodes a reference clip's faces (FaceCrop/Parse) into identity tokens for "
                        "IdentityTokenInject, and draws the routing plan (slots x frames).",
            inputs=[
                SlotIDModelType.Input("slot_id"),
                FaceClipType.Input("face_clip", tooltip="FaceCrop/Parse output (needs ArcFace embeddings)"),
                io.Vae.Input("vae", optional=True,
                             tooltip="Wan VAE: the crops' latents give the low-frequency tokens. Required unless "
                                     "the checkpoint's config has pool 0"),
            ],
            outputs=[IdentityTokensType.Output(display_name="identity_tokens"),
                     io.Image.Output(display_name="routing")],
        )

    @classmethod
    def execute(cls, slot_id, face_clip, vae=None) -> io.NodeOutput:
        config = slot_id.config
        inputs = clip_inputs(face_clip)  # checks the embeddings first: the cheapest error
        if not bool(face_clip.valid.any()):
            raise ValueError("face_clip: no frame has a usable face; choose another clip or relax FaceCrop/Parse.")
        if config.pool > 0:
            if vae is None:
                raise ValueError(f"vae: this Slot-ID checkpoint reads each crop's Wan VAE latent ({config.pool}x"
                                 f"{config.pool} low-frequency tokens per frame); connect the Wan VAE.")
            inputs["latents"] = encode_crops(vae, face_clip.crops, face_clip.valid, config.latent_channels)
        elif vae is not None:
            logging.info("[WanIdentity] SlotEncoder: this checkpoint has no low-frequency tokens; vae not used.")
        comfy.model_management.load_models_gpu([slot_id.patcher], force_full_load=True)  # ~100 MB: whole
        ckpt = slot_id.checkpoint
        tokens = slot_id.encoder.encode_clip(**inputs, device=slot_id.patcher.load_device, backbone=ckpt.backbone,
                                             dim=ckpt.dim, source=ckpt.source)
        routing = routing_image(tokens.plan, face_clip.valid)
        return io.NodeOutput(tokens, routing, ui=ui.PreviewImage(routing, cls=cls))  # heatmap on the node


def prepend(conditioning, rows, name):
    """Each entry [cond [B, L, C], opts] -> [cat(rows, cond) [B, n + L, C], opts]; a new list, inputs untouched.
    An empty conditioning (the tokens would silently go nowhere) and entries of batch 0 (the sampler would divide
    by zero) are refused."""
    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise ValueError(f"{name}: the conditioning is empty (no entries), so the identity tokens would go nowhere; "
                         f"connect the {name} prompt's CLIP Text Encode output.")
    out = []
    for i, (cond, opts) in enumerate(conditioning):
        if cond.ndim != 3 or cond.shape[-1] != rows.shape[-1]:
            raise ValueError(f"{name}: entry {i} has shape {list(cond.shape)}; identity tokens are "
                             f"{rows.shape[-1]}-d rows for Wan's umT5 conditioning [B, L, {rows.shape[-1]}].")
        if cond.shape[0] == 0 or cond.shape[1] == 0:
            raise ValueError(f"{name}: entry {i} is empty (shape {list(cond.shape)}: no prompt in it); connect the "
                             f"{name} prompt's CLIP Text Encode output.")
        extra = rows.to(device=cond.device, dtype=cond.dtype)[None].expand(cond.shape[0], -1, -1)
        out.append([torch.cat([extra, cond], dim=1), opts.copy()])
    return out


class WanIDIdentityTokenInject(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDIdentityTokenInject",
            display_name="Identity Token Inject",
            category="WanIdentity",
            description="Prepends the identity tokens to every positive conditioning entry. With pad_negative the "
                        "negative gets as many zero rows (Wan's own padding), so both stay one batched model call.",
            inputs=[
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative", tooltip="The negative prompt; padded with zero rows when "
                                                          "pad_negative is on"),
                IdentityTokensType.Input("identity_tokens"),
                io.Float.Input("strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Multiplies the slot tokens (the gate); 0 leaves the anchor tokens alone"),
                io.Boolean.Input("pad_negative", default=True,
                                 tooltip="Pad the negative with zero rows so positive and negative run batched"),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, negative, identity_tokens: IdentityTokens, strength=1.0,
                pad_negative=True) -> io.NodeOutput:
        check_finite_numbers(strength=(strength, "0 to 3; 1 = as trained, 0 = anchor tokens only"))
        rows = identity_tokens.scaled(strength)
        new_positive = prepend(positive, rows, "positive")
        if pad_negative:
            negative = prepend(negative, torch.zeros_like(rows), "negative")
        return io.NodeOutput(new_positive, negative)


NODES = [WanIDSlotIDLoader, WanIDSlotEncoder, WanIDIdentityTokenInject]
