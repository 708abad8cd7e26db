"""Runs the OFFICIAL Stand-In code (a copy of github.com/WeChatCV/Stand-In outside this repository, see
scripts/standin_oracle_env.py) in its own process: the oracle of tests/test_standin_vace.py.

    <oracle python> tests/standin_vace_oracle.py REPO IN.safetensors OUT.safetensors

Its metadata `config` (JSON) says the mode:

- "calls": Stand-In + VACE model calls as infer_with_vace.py makes them. IN holds `wan.*` (a ComfyUI-layout Wan 2.1
  VACE state dict: the official WanModel and VaceWanModel take the same key names), `vae.*` (a Wan 2.1 VAE in the
  original layout), `lora.*` (a Stand-In file's tensors), `ip_image` (uint8 [h, w, 3], the processed face),
  `video` (uint8 [T, H, W, 3]), optionally `mask` (uint8 [T, H, W]) and `vace_ref` (uint8 [H, W, 3]), and per call
  k: `x.k`, `t.k`, `ctx.k`. The official entry points do the work: WanVideoPipeline.encode_ip_image (the Stand-In
  reference latent), set_stand_in (the LoRA, from a .ckpt as the official loader reads it), WanVideoUnit_VACE (the
  VACE context from frames, masks and reference image) and model_fn_wan_video (the model call; ip_image on the
  first call only, as WanVideoPipeline.__call__ passes it). OUT holds `out.k`; with config `wrong` also `wrong.k`,
  a deliberately wrong variant ("hints_on_reference": the VACE branch also runs over the reference tokens and adds
  its hints to them) that the test must tell apart.
- "prep": the official input preparation. IN holds `video` (uint8 [T, H, W, 3]) and `vace_ref` (uint8 [h, w, 3]);
  WanVideoPipeline.__call__ reads the video with load_video_as_list (centre crop to multiples of 16, 4k+1 frames)
  and letterboxes the reference image on white; the run stops at the first pipeline unit. OUT holds `video` and
  `vace_ref` as the units would receive them (uint8).

Test-side shims, this process only: LoRALinearLayer is built on "cuda" by default (there is no GPU here), so its
default device becomes "cpu"; imageio's reader is replaced by one over the given frames (no video file or ffmpeg
involved); Image.open returns the given reference image. Nothing here re-implements Stand-In or VACE.
"""
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch


def sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def make_pipe():
    from pipelines.wan_video import WanVideoPipeline
    return WanVideoPipeline(device="cpu", torch_dtype=torch.float32)


def prep(sd):
    """The official __call__ up to its first pipeline unit: what it makes of the video file and reference image."""
    from PIL import Image
    import imageio
    import pipelines.wan_video as wv

    frames = sd["video"].numpy()

    class Reader:
        def get_meta_data(self):
            return {"size": (frames.shape[2], frames.shape[1])}

        def count_frames(self):
            return frames.shape[0]

        def get_data(self, i):
            if i >= frames.shape[0]:
                raise IndexError(i)
            return frames[i]

        def close(self):
            pass

    imageio.get_reader = lambda path: Reader()
    wv.os.path.isfile = lambda path: True
    ref = Image.fromarray(sd["vace_ref"].numpy())
    wv.Image.open = lambda path: ref

    class Captured(Exception):
        pass

    pipe = make_pipe()
    pipe.scheduler = types.SimpleNamespace(set_timesteps=lambda *a, **k: None)

    def capture(unit, pipe_, shared, posi, nega):
        raise Captured(shared)

    pipe.unit_runner = capture
    try:
        pipe(prompt="", vace_video="video.mp4", vace_reference_image="ref.png")
    except Captured as c:
        shared = c.args[0]
    else:
        raise RuntimeError("the official pipeline ran no unit")
    video = torch.from_numpy(np.stack([np.asarray(f) for f in shared["vace_video"]]))
    vace_ref = torch.from_numpy(np.asarray(shared["vace_reference_image"]).copy())
    assert (shared["width"], shared["height"], shared["num_frames"]) == (video.shape[2], video.shape[1], video.shape[0])
    return {"video": video.contiguous(), "vace_ref": vace_ref.contiguous()}


def calls(sd, cfg):
    from PIL import Image
    from models import wan_video_dit
    from models.set_condition_branch import set_stand_in
    from models.wan_video_dit import WanModel
    from models.wan_video_vace import VaceWanModel
    from models.wan_video_vae import WanVideoVAE
    from pipelines.wan_video import WanVideoUnit_VACE, model_fn_wan_video

    init = wan_video_dit.LoRALinearLayer.__init__
    defaults = list(init.__defaults__)
    defaults[1] = "cpu"  # (rank, device, dtype): the official default device is "cuda"
    init.__defaults__ = tuple(defaults)

    dim, heads, layers, ffn = cfg["dim"], cfg["dim"] // 128, cfg["layers"], cfg["ffn"]
    wan = sub(sd, "wan.")
    pipe = make_pipe()
    pipe.dit = WanModel(dim=dim, in_dim=16, ffn_dim=ffn, out_dim=16, text_dim=4096, freq_dim=256, eps=1e-6,
                        patch_size=(1, 2, 2), num_heads=heads, num_layers=layers, has_image_input=False).float().eval()
    pipe.dit.load_state_dict({k: v for k, v in wan.items() if not k.startswith("vace")}, strict=True)
    pipe.vace = VaceWanModel(vace_layers=tuple(cfg["vace_layers"]), vace_in_dim=96, patch_size=(1, 2, 2),
                             has_image_input=False, dim=dim, num_heads=heads, ffn_dim=ffn).float().eval()
    pipe.vace.load_state_dict({k: v for k, v in wan.items() if k.startswith("vace")}, strict=True)
    pipe.vae = WanVideoVAE(z_dim=16)
    pipe.vae.model.load_state_dict(sub(sd, "vae."), strict=True)
    pipe.vae.float().eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(sub(sd, "lora."), Path(tmp) / "Stand-In_wan2.1_T2V_14B.ckpt")
        set_stand_in(pipe, model_path=tmp)
    pipe.dit.float()

    with torch.no_grad():
        ip_latent = pipe.encode_ip_image(Image.fromarray(sd["ip_image"].numpy()))
        frames = [Image.fromarray(f) for f in sd["video"].numpy()]
        masks = [Image.fromarray(m).convert("RGB") for m in sd["mask"].numpy()] if "mask" in sd else None
        ref = Image.fromarray(sd["vace_ref"].numpy()) if "vace_ref" in sd else None
        T, H, W = sd["video"].shape[:3]
        vace = WanVideoUnit_VACE().process(pipe, vace_video=frames, vace_video_mask=masks, vace_reference_image=ref,
                                           vace_scale=cfg["vace_scale"], height=H, width=W, num_frames=T,
                                           tiled=False, tile_size=(30, 52), tile_stride=(15, 26))
        out = {"vace_context": vace["vace_context"].float().contiguous()}
        k = 0
        while f"x.{k}" in sd:
            common = dict(latents=sd[f"x.{k}"].float(), timestep=sd[f"t.{k}"].float(), context=sd[f"ctx.{k}"].float(),
                          vace_context=vace["vace_context"], vace_scale=vace["vace_scale"],
                          ip_image=ip_latent if k == 0 else None)  # __call__ passes it on the first call only
            out[f"out.{k}"] = model_fn_wan_video(pipe.dit, vace=pipe.vace, **common).float().contiguous()
            k += 1
        if cfg.get("wrong") == "hints_on_reference":
            for m in pipe.dit.modules():  # a fresh run: no cached reference keys/values
                if hasattr(m, "kv_cache"):
                    m.kv_cache = m.cond_size = None
            k = 0
            while f"x.{k}" in sd:
                out[f"wrong.{k}"] = hints_on_reference(pipe, sd[f"x.{k}"].float(), sd[f"t.{k}"].float(),
                                                       sd[f"ctx.{k}"].float(), vace["vace_context"],
                                                       vace["vace_scale"], ip_latent if k == 0 else None)
                k += 1
    return out


def hints_on_reference(pipe, latents, timestep, context, vace_context, vace_scale, ip_image):
    """A WRONG variant for the test to catch: model_fn_wan_video, except that the VACE branch runs over the video
    AND reference tokens (VaceWanModel pads its context with zeros to their length) and adds its hints to both."""
    from models.wan_video_dit import sinusoidal_embedding_1d
    dit, vace = pipe.dit, pipe.vace
    t = dit.time_embedding(sinusoidal_embedding_1d(dit.freq_dim, timestep))
    t_mod = dit.time_projection(t).unflatten(1, (6, dit.dim))
    context = dit.text_embedding(context)
    x, (f, h, w) = dit.patchify(latents)
    freqs = torch.cat([dit.freqs[0][1:f + 1].view(f, 1, 1, -1).expand(f, h, w, -1),
                       dit.freqs[1][1:h + 1].view(1, h, 1, -1).expand(f, h, w, -1),
                       dit.freqs[2][1:w + 1].view(1, 1, w, -1).expand(f, h, w, -1)], -1).reshape(f * h * w, 1, -1)
    x_ip = t_mod_ip = None
    n = x.shape[1]
    if ip_image is not None:
        t_ip = dit.time_embedding(sinusoidal_embedding_1d(dit.freq_dim, torch.zeros_like(timestep)))
        t_mod_ip = dit.time_projection(t_ip).unflatten(1, (6, dit.dim))
        x_ip, (fi, hi, wi) = dit.patchify(ip_image)
        freqs_ip = torch.cat([dit.freqs[0][0].view(1, 1, 1, -1).expand(fi, hi, wi, -1),
                              dit.freqs[1][h + 1:h + 1 + hi].view(1, hi, 1, -1).expand(fi, hi, wi, -1),
                              dit.freqs[2][w + 1:w + 1 + wi].view(1, 1, wi, -1).expand(fi, hi, wi, -1)],
                             -1).reshape(fi * hi * wi, 1, -1)
        all_freqs = torch.cat([freqs, freqs_ip], 0)
        hints = vace(torch.cat([x, x_ip], 1), vace_context, context, t_mod, all_freqs)
        freqs = all_freqs
    else:
        hints = vace(x, vace_context, context, t_mod, freqs)
    for i, block in enumerate(dit.blocks):
        x, x_ip = block(x, context, t_mod, freqs, x_ip=x_ip, t_mod_ip=t_mod_ip)
        if i in vace.vace_layers_mapping:
            hint = hints[vace.vace_layers_mapping[i]] * vace_scale
            x = x + hint[:, :n]
            if x_ip is not None:
                x_ip = x_ip + hint[:, n:]
    return dit.unpatchify(dit.head(x, t), (f, h, w)).float().contiguous()


def main(repo, inp, outp):
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.backends.cuda.matmul.allow_tf32 = False
    sys.path.insert(0, repo)
    with safe_open(inp, "pt") as f:
        cfg = json.loads(f.metadata()["config"])
        sd = {k: f.get_tensor(k) for k in f.keys()}
    out = prep(sd) if cfg["mode"] == "prep" else calls(sd, cfg)
    save_file(out, outp)


if __name__ == "__main__":
    main(*sys.argv[1:4])
