"""RestrictedAttnPatch: Stand-In's reference branch on ComfyUI's native Wan model."""
import os

import folder_paths
from .v3 import io

from ..wanid.errors import check_finite, check_finite_numbers
from ..wanid.standin.checkpoint import load_standin
from .cache import LoadedCache, file_key, file_stamp
from .standin_patch import apply_standin, check_model
from .wan import check_channels, encode_reference, latent_in, wan_model_of

_weights = LoadedCache(2)  # two entries hold the Wan 2.2 high/low pair


def load_weights_cached(name):
    path = folder_paths.get_full_path("stand_in", name) if name else None
    if path is None:
        raise FileNotFoundError(
            f"standin_name: {name!r} is not in models/stand_in. Put Stand-In_wan2.1_T2V_14B.ckpt (or the Wan 2.2 "
            f"high/low pair) in {os.path.join(folder_paths.models_dir, 'stand_in')} and refresh.")
    return _weights.get(file_key(path), lambda: load_standin(path))


NEEDS = "Stand-In needs a Wan 2.1 14B / 2.2 A14B text-to-video model and its VAE"


def reference_latent_of(model, reference_image=None, vae=None, reference_latent=None):
    """The reference as the DiT sees it: a Wan latent [1, C, 1, h, w] in the normalised space. The channel count
    and the values are checked before the model's latent format reads them."""
    channels = wan_model_of(model, "RestrictedAttnPatch").patch_embedding.in_channels
    if reference_latent is not None:
        samples = reference_latent["samples"]
        if samples.ndim == 4:
            samples = samples.unsqueeze(2)
        if samples.ndim != 5 or samples.shape[0] != 1 or samples.shape[2] != 1:
            raise ValueError(f"reference_latent: expected one encoded image [1, C, 1, h, w], got "
                             f"{list(samples.shape)}. Encode the 512x512 face crop alone with VAE Encode.")
        if not samples.is_floating_point():
            raise ValueError(f"reference_latent: holds {str(samples.dtype).replace('torch.', '')} values, not a "
                             "latent; encode the face crop with VAE Encode.")
        check_channels(samples, channels, "reference_latent", NEEDS)
        check_finite(samples, "reference_latent", "it is not a usable latent; encode the face crop again with "
                                                  "VAE Encode (and check the VAE file)")
    elif reference_image is not None:
        if reference_image.shape[0] != 1:
            raise ValueError(f"reference_image: got {reference_image.shape[0]} images; give one (FaceCrop/Parse's "
                             "anchor output).")
        h, w = reference_image.shape[1:3]
        if h % 16 or w % 16:
            raise ValueError(f"reference_image: {w}x{h} is not a multiple of 16; Stand-In expects the 512x512 white-"
                             "background face crop (FaceCrop/Parse's anchor output).")
        if vae is None:
            raise ValueError("vae: connect the Wan VAE so the reference_image can be encoded (or give "
                             "reference_latent).")
        check_finite(reference_image, "reference_image", "give the face crop from Face Crop / Parse's anchor")
        return encode_reference(model, vae, reference_image, "reference_image", NEEDS)
    else:
        raise ValueError("reference_image: connect the face crop (and the VAE), or a reference_latent.")
    return latent_in(model, samples)


class WanIDRestrictedAttnPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDRestrictedAttnPatch",
            display_name="Stand-In Restricted Attention",
            category="WanIdentity",
            description="Stand-In identity on a native Wan model: the reference face joins each block's "
                        "self-attention through its own LoRA branch. Patch each Wan 2.2 expert with its own file.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("standin_name", options=folder_paths.get_filename_list("stand_in"),
                               tooltip="Stand-In weights in models/stand_in"),
                io.Float.Input("strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Weight of the reference in attention: 1 = official Stand-In, 0 = off"),
                io.Image.Input("reference_image", optional=True,
                               tooltip="512x512 face crop on white (FaceCrop/Parse's anchor)"),
                io.Vae.Input("vae", optional=True, tooltip="Wan VAE, to encode reference_image"),
                io.Latent.Input("reference_latent", optional=True,
                                tooltip="The reference already encoded with VAE Encode (instead of the image)"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def fingerprint_inputs(cls, standin_name=None, **kwargs):
        return file_stamp("stand_in", standin_name)  # a file replaced under the same name is read again

    @classmethod
    def execute(cls, model, standin_name, strength, reference_image=None, vae=None, reference_latent=None):
        check_finite_numbers(strength=(strength, "0 to 3; 1 = official Stand-In, 0 = off"))
        weights = load_weights_cached(standin_name)
        check_model(model, weights)  # before the VAE runs: a wrong model or file fails at once
        latent = reference_latent_of(model, reference_image, vae, reference_latent)
        return io.NodeOutput(apply_standin(model, weights, latent, strength))


NODES = [WanIDRestrictedAttnPatch]
