"""ComfyUI as the trainer's model loader: the frozen Wan DiT, its VAE and umT5, loaded with ComfyUI's own loaders
(comfy.sd.load_diffusion_model, comfy.sd.VAE, comfy.sd.load_clip with CLIPType.WAN), from the ComfyUI install
named on the command line. The only module of wanid.train that imports ComfyUI, and only inside functions, after
import_comfyui() put that install on sys.path.
"""
import contextlib
import os
import sys

import torch

DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def import_comfyui(path, cpu=False):
    """Put ComfyUI at `path` on sys.path and import it (as a library: its argument parser stays off)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not (os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))):
        raise FileNotFoundError(f"--comfyui {path}: not a ComfyUI install (no main.py and comfy/ there)")
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args
    if cpu:
        comfy.cli_args.args.cpu = True  # before any other comfy import
    import comfy.model_management  # noqa: F401
    import comfy.sd  # noqa: F401
    return path


@contextlib.contextmanager
def training_mode():
    """ComfyUI's "a trainer runs the model" flag (comfy.model_management.in_training), set while the Slot-ID trainer
    runs the DiT and put back as it was afterwards, also on errors. Newer ComfyUI (0.33.0) reads it in
    comfy.ldm.flux.math.apply_rope/apply_rope1: unset, they run a comfy-kitchen kernel without autograd or float64.
    A no-op where ComfyUI is not loaded (a plain-torch DiT) or has no such flag (0.3.64). Not thread-safe: the flag
    is process-wide, as in ComfyUI's own trainer."""
    # sys.modules, not an import: a ComfyUI-built DiT means comfy.model_management is already loaded
    mm = sys.modules.get("comfy.model_management")
    if mm is None or not hasattr(mm, "in_training"):
        yield
        return
    previous = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous


def model_path(folder, name):
    """An absolute/relative file path as it is, else a file name in ComfyUI's model folder (folder_paths)."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    import folder_paths
    full = folder_paths.get_full_path(folder, name)
    if full is None:
        have = folder_paths.get_filename_list(folder)
        raise FileNotFoundError(f"{name}: not a file, and not in ComfyUI's models/{folder} "
                                f"({len(have)} files there{': ' + ', '.join(have[:8]) if have else ''})")
    return full


def load_backbone(name, weight_dtype="default"):
    """(ModelPatcher, diffusion_model) of a Wan T2V DiT, loaded on the GPU as far as memory allows (ComfyUI's
    lowvram partial loading casts the rest per call, so a 14B model trains on a card smaller than its weights)."""
    import comfy.model_management as mm
    import comfy.sd

    options = {} if DTYPES[weight_dtype] is None else {"dtype": DTYPES[weight_dtype]}
    patcher = comfy.sd.load_diffusion_model(model_path("diffusion_models", name), model_options=options)
    kind = type(patcher.model.model_config).__name__
    if not kind.startswith("WAN") or "T2V" not in kind:
        raise ValueError(f"--unet {name} is detected as {kind}; Slot-ID trains on a Wan text-to-video model")
    mm.load_models_gpu([patcher])
    return patcher, patcher.model.diffusion_model


def device():
    import comfy.model_management as mm
    return mm.get_torch_device()


def compute_dtype(patcher, bf16=False):
    """The activation dtype: bf16 under --bf16, else the dtype ComfyUI computes the DiT in (fp8 weights: bf16)."""
    if bf16:
        return torch.bfloat16
    model = patcher.model
    dt = model.manual_cast_dtype or model.get_dtype()
    return dt if dt in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16


def load_vae(name):
    """ComfyUI's VAE for a file (VAELoader's path); raises unless ComfyUI recognised it."""
    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(model_path("vae", name)))
    vae.throw_exception_if_invalid()
    return vae


class ComfyEncoders:
    """The precompute encoders (wanid.train.precompute) on ComfyUI's VAE and umT5."""

    def __init__(self, vae_name, text_encoder_name, latent_format):
        import comfy.sd

        self.vae = load_vae(vae_name)
        self.clip = comfy.sd.load_clip(ckpt_paths=[model_path("text_encoders", text_encoder_name)],
                                       clip_type=comfy.sd.CLIPType.WAN)
        self.latent_format = latent_format

    @torch.no_grad()
    def encode_video(self, frames):
        latent = self.vae.encode(frames[..., :3])  # [1, C, F, h, w]
        return self.latent_format.process_in(latent)[0].float().cpu()

    @torch.no_grad()
    def encode_images(self, images):
        """The crops' latents as the Slot-ID Encoder node makes them (wanid.slot.crop_latents: one image at a time,
        first latent frame, process_in, channel and finiteness checks)."""
        from ..slot.crop_latents import encode_crops

        valid = torch.ones(images.shape[0], dtype=torch.bool)
        return encode_crops(self.vae.encode, self.latent_format.process_in, images, valid,
                            self.latent_format.latent_channels)

    @torch.no_grad()
    def encode_text(self, caption):
        cond = self.clip.encode_from_tokens(self.clip.tokenize(caption))[0].float().cpu()  # [L, 4096]
        keep = cond.abs().amax(dim=1) > 0
        n = int(keep.nonzero().max()) + 1 if bool(keep.any()) else 1
        return cond[:n]  # padding rows are zeros; the trainer pads again to --text-len
