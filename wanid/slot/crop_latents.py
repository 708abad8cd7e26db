"""Face crops -> the Slot-ID encoder's low-frequency latents: the one conversion, used by the Slot-ID Encoder node
(nodes/slot_id.py) and by training's precompute (wanid/train/comfy_host.py), so both give the encoder the same
numbers. Plain torch: the VAE and its latent normalisation are passed in."""
import torch

from ..errors import WanIDError


class CropLatentError(WanIDError):
    """A VAE that does not give the latents a Slot-ID checkpoint reads."""


def encode_crops(encode, process_in, crops, valid, channels, on_progress=None):
    """Each valid crop as a one-frame video (Wan's VAE reads a batch of images as time: several crops at once would
    be packed 4 frames per latent frame) -> normalised latents [T, C, h, w] float32 on the CPU; invalid frames are
    zeros (they get no routing mass).

    encode(image [1, H, W, 3] float 0..1) -> the VAE's raw latent [1, C, F, h, w] (or [1, C, h, w]);
    process_in(latent [1, C, 1, h, w] float32) -> the normalised latent (the latent format's process_in);
    channels: the latent channels the checkpoint expects (16: Wan 2.1 VAE, 48: Wan 2.2 VAE);
    on_progress(): called once per encoded crop."""
    out = None
    for t in range(crops.shape[0]):
        if not bool(valid[t]):
            continue
        lat = encode(crops[t:t + 1, :, :, :3])
        if lat.ndim == 4:  # [1, C, h, w] from an image VAE
            lat = lat.unsqueeze(2)
        if lat.ndim != 5 or lat.shape[1] != channels:
            raise CropLatentError(
                f"vae: it encodes a crop to {list(lat.shape)}; this Slot-ID checkpoint expects {channels}-channel "
                f"Wan latents ({'Wan 2.1 VAE' if channels == 16 else 'Wan 2.2 VAE'}).")
        lat = process_in(lat[:, :, :1].float().cpu())[0, :, 0].float()
        if not bool(torch.isfinite(lat).all()):
            raise CropLatentError(f"vae: the latent of crop {t} is not finite (NaN/inf); check the VAE file.")
        if out is None:
            out = torch.zeros((crops.shape[0],) + tuple(lat.shape))
        out[t] = lat
        if on_progress is not None:
            on_progress()
    return out
