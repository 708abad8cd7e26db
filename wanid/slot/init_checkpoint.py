"""Write a freshly initialised Slot-ID checkpoint (what training starts from; it leaves the DiT unchanged).

    python -m wanid.slot.init_checkpoint --dim 5120 --out models/slot_id/slot_id_init.safetensors
    python -m wanid.slot.init_checkpoint --dim 128 --layers 2 --backbone tiny --out tiny.safetensors \
        --config '{"dim": 64}'

--backbone defaults to the known Wan model of that width (5120: wan2.1-t2v-14b, 1536: wan2.1-t2v-1.3b,
3072: wan2.2-ti2v-5b, whose VAE has 48 latent channels); --layers is needed for any other width.
"""
import argparse
import json
import sys

from .checkpoint import BACKBONES, DEFAULT_BACKBONE_FOR_DIM, fresh_checkpoint, save_checkpoint
from .encoder import SlotIDConfig


def build(dim, layers=None, backbone=None, config_overrides=None, seed=0):
    backbone = backbone or DEFAULT_BACKBONE_FOR_DIM.get(dim, "")
    known = BACKBONES.get(backbone)
    if known is not None and known["dim"] != dim:
        raise ValueError(f"--backbone {backbone} has dim {known['dim']}, not {dim}")
    if layers is None:
        if known is None:
            raise ValueError(f"--layers is needed: dim {dim} / backbone {backbone!r} is not a known Wan model "
                             f"({', '.join(BACKBONES)})")
        layers = known["num_blocks"]
    fields = {}
    if known is not None:
        fields["latent_channels"] = known["latent_channels"]
    fields.update(config_overrides or {})
    config = SlotIDConfig.from_json(json.dumps({**json.loads(SlotIDConfig().to_json()), **fields}))
    return fresh_checkpoint(dim, layers, config, backbone=backbone, seed=seed)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m wanid.slot.init_checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, required=True, help="the Wan DiT width (5120 for 14B, 1536 for 1.3B)")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--backbone", default=None, help=f"backbone name ({', '.join(BACKBONES)}, or any label)")
    ap.add_argument("--layers", type=int, default=None, help="number of DiT blocks (default: from the backbone)")
    ap.add_argument("--config", default="{}", help="JSON object overriding SlotIDConfig fields")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        ckpt = build(args.dim, args.layers, args.backbone, json.loads(args.config), args.seed)
    except ValueError as e:
        ap.error(str(e))
    save_checkpoint(ckpt, args.out)
    n_enc = sum(v.numel() for v in ckpt.encoder_state.values())
    n_lora = sum(v.numel() for v in ckpt.lora.values())
    print(f"wrote {args.out}: backbone {ckpt.backbone or '-'}, dim {ckpt.dim}, {ckpt.num_blocks} blocks, "
          f"encoder {n_enc / 1e6:.1f}M + LoRA {n_lora / 1e6:.1f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
