"""Runs the OFFICIAL Lynx code (a copy of github.com/bytedance/lynx outside this repository, see
scripts/lynx_oracle_env.py) on diffusers from PyPI, in its own process: the oracle of tests/test_lynx.py.

    <oracle python> tests/lynx_oracle.py REPO IN.safetensors OUT.safetensors

IN holds `wan.*` (a ComfyUI-layout Wan 2.1 T2V state dict, converted here with diffusers' own converter),
`resampler.*`, `ip.*`, `ref.*` (the Lynx files' tensors), `embedding` [512], `ref_pos`/`ref_neg` latents and
`ref_ctx` (full), and per call k: `x.k`, `t.k`, `ctx.k`, `neg.k` (1 = the negative's attention kwargs); its
metadata holds `config` (JSON: layers, dim, ffn, ip_scale, ref_scale, variant). OUT holds `out.k`.
The model calls go exactly through the official entry points: the full transformer with attention_kwargs
(ip_hidden_states, ref_buffer, ...) as LynxWanInfer.generate_t2v builds them, the reference buffers as
LynxWanPipeline.encode_reference_images makes them after its VAE and text encoder, and the lite transformer with
image_embed / ip_scale as LynxLitePipeline passes them. Nothing here re-implements Lynx.

flash_attn cannot be installed here: this process alone gets a stand-in `flash_attn` module whose varlen kernel
is PyTorch SDPA per sequence (test-side shim; the math of attention is unchanged).
"""
import json
import sys
import types

import torch
import torch.nn.functional as F


def install_flash_attn_shim():
    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, **kw):
        out = torch.empty_like(q)
        for i in range(len(cu_q) - 1):
            a, b = int(cu_q[i]), int(cu_q[i + 1])
            c, d = int(cu_k[i]), int(cu_k[i + 1])
            o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[c:d].transpose(0, 1),
                                               v[c:d].transpose(0, 1), is_causal=causal)
            out[a:b] = o.transpose(0, 1)
        return out

    pkg = types.ModuleType("flash_attn")
    iface = types.ModuleType("flash_attn.flash_attn_interface")
    iface.flash_attn_varlen_func = flash_attn_varlen_func
    pkg.flash_attn_interface = iface
    sys.modules["flash_attn"], sys.modules["flash_attn.flash_attn_interface"] = pkg, iface


def sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def main(repo, inp, outp):
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.backends.cuda.matmul.allow_tf32 = False
    # diffusers/transformers probe for flash_attn by its import spec: let them find none first, then add the shim
    # for the official modules/common/flash_attention.py alone.
    import diffusers.loaders.peft  # noqa: F401
    import diffusers.models.transformers.transformer_wan  # noqa: F401
    import transformers.modeling_utils  # noqa: F401
    install_flash_attn_shim()
    sys.path.insert(0, repo)
    with safe_open(inp, "pt") as f:
        cfg = json.loads(f.metadata()["config"])
        sd = {k: f.get_tensor(k) for k in f.keys()}
    variant = cfg["variant"]
    if variant == "full":
        from modules.full.transformer_wan import WanTransformer3DModel
        from modules.full.attention_processor import register_ip_adapter, register_ref_adapter
    else:
        from modules.lite.trasnformer_wan import WanTransformer3DModel
        from modules.lite.attention_processor import register_ip_adapter_wan
    from modules.common.resampler import Resampler
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    dim = cfg["dim"]
    model = WanTransformer3DModel(num_attention_heads=dim // 128, attention_head_dim=128, in_channels=16,
                                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=cfg["ffn"],
                                  num_layers=cfg["layers"], cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                  eps=1e-6).float().eval()
    wan = convert_wan_transformer_to_diffusers(sub(sd, "wan."))
    model.load_state_dict(wan, strict=True)

    rs = sub(sd, "resampler.")
    dim_r = rs["latents"].shape[-1]
    resampler = Resampler(depth=len({k.split(".")[1] for k in rs if k.startswith("layers.")}), dim=dim_r,
                          dim_head=64, embedding_dim=512, ff_mult=4, heads=rs["layers.0.0.to_q.weight"].shape[0] // 64,
                          num_queries=rs["latents"].shape[1], output_dim=rs["proj_out.weight"].shape[0])
    resampler.load_state_dict(rs, strict=True)
    resampler.float().eval()
    ip = sub(sd, "ip.")
    if variant == "full":
        regs = ip["0.registers"].shape[1] if "0.registers" in ip else 0
        model, ip_layers = register_ip_adapter(model, cross_attention_dim=ip["0.to_k_ip.weight"].shape[1],
                                               n_registers=regs, dtype=torch.float32)
        ip_layers.load_state_dict(ip, strict=True)
        ref = sub(sd, "ref.")
        if ref:
            model, ref_layers = register_ref_adapter(model, dtype=torch.float32)
            ref_layers.load_state_dict(ref, strict=True)
    else:
        model, ip_layers = register_ip_adapter_wan(model, hidden_size=dim, cross_attention_dim=ip["0.to_k_ip.weight"].shape[1],
                                                   dtype=torch.float32, layers=2)
        ip_layers.load_state_dict(ip, strict=True)

    out = {}
    with torch.no_grad():
        emb = sd["embedding"].float()[None, None, :]
        tokens = {0: resampler(emb), 1: resampler(emb * 0)}  # generate_t2v: resampler(arcface_embed * 0)
        if cfg.get("wrong") == "negative_uses_positive_tokens":
            tokens[1] = tokens[0]
        buffers = {}
        if variant == "full" and "ref_pos" in sd:
            for neg, name in ((0, "ref_pos"), (1, "ref_neg")):
                # encode_reference_images after its VAE and text encoder: the transformer as feature extractor
                buffers[neg] = model(hidden_states=[sd[name].float()], encoder_hidden_states=[sd["ref_ctx"].float()],
                                     timestep=torch.LongTensor([0]), attention_kwargs={"ref_feature_extractor": True},
                                     return_dict=False)
        k = 0
        while f"x.{k}" in sd:
            x, t, ctx, neg = sd[f"x.{k}"].float(), sd[f"t.{k}"].float(), sd[f"ctx.{k}"].float(), int(sd[f"neg.{k}"])
            if variant == "full":
                kwargs = {"ip_hidden_states": [tokens[neg]], "ip_scale": cfg["ip_scale"],
                          "ref_buffer": buffers.get(neg), "ref_scale": cfg["ref_scale"]}
                y = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, attention_kwargs=kwargs,
                          return_dict=False)[0]
            else:
                y = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, image_embed=tokens[neg],
                          ip_scale=cfg["ip_scale"], return_dict=False)[0]
            out[f"out.{k}"] = y.float().contiguous()
            k += 1
    save_file(out, outp)


if __name__ == "__main__":
    main(*sys.argv[1:4])
