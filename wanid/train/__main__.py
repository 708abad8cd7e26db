"""python -m wanid.train: precompute the cache for a manifest, then train the Slot-ID encoder + cross-attention
LoRA on a frozen Wan DiT loaded by ComfyUI (docs/training.md has the recipe).

    python -m wanid.train --comfyui ~/ComfyUI --unet wan2.1_t2v_14B_bf16.safetensors \
        --vae wan_2.1_vae.safetensors --text-encoder umt5_xxl_fp8_e4m3fn_scaled.safetensors \
        --manifest data/rows.jsonl --out runs/slot1 --steps 3000 --lr 1e-4 --bf16 --grad-checkpointing

Outputs in --out: step_NNNNNN.safetensors (inference format: copy one into models/slot_id), step_NNNNNN.state.pt
(optimizer, step, RNG: what --resume reads), latest.json, log.jsonl (loss per step, validation loss), skipped.txt
(the manifest rows that could not be used and why), cache/ (unless --cache points elsewhere).
"""
import argparse
import json
import logging
import os
import sys

from ..slot.checkpoint import fresh_checkpoint, load_checkpoint
from ..slot.encoder import SlotIDConfig
from .dataset import read_manifest, split_validation
from .precompute import PrecomputeSettings, build_cache
from .trainer import TrainConfig, Trainer

log = logging.getLogger("wanid.train")


class Lazy:
    """An object built on first use (the VAE, umT5 and face models are only loaded when a row is not cached)."""

    def __init__(self, name, factory):
        self.name = name
        self._factory = factory
        self._obj = None

    def __getattr__(self, item):
        if item.startswith("_"):
            raise AttributeError(item)
        if self._obj is None:
            log.info("loading %s", self.name)
            self._obj = self._factory()
        return getattr(self._obj, item)


def encoders_name(vae, text_encoder, latent_format):
    return f"vae={os.path.basename(vae)};text={os.path.basename(text_encoder)};latent={latent_format}"


def face_tools_name(detector, insightface, parser):
    return f"detector={detector};insightface={os.path.basename(os.path.normpath(insightface or ''))};" \
           f"parser={os.path.basename(parser) if parser else 'fallback'}"


def load_face_tools(detector_kind, insightface_root, parser_path, provider="auto"):
    """FaceCrop/Parse's own models, chosen by its rule (wanid.face.tools: the detector, its pack's ArcFace model or
    any ArcFace model in the folder, BiSeNet if present). The reference features need the ArcFace model."""
    from ..face.tools import load_face_tools as face_tools

    tools = face_tools(detector_kind, insightface_root, provider, parser_path,
                       name=face_tools_name(detector_kind, insightface_root, parser_path))
    if tools.embedder is None:
        raise FileNotFoundError(
            f"the reference features need an ArcFace model: put antelopev2 (glintr100.onnx) or buffalo_l "
            f"(w600k_r50.onnx) in {insightface_root}/models/<pack>")
    return tools


def run_training(manifest, out_dir, diffusion_model, *, config: TrainConfig, settings: PrecomputeSettings,
                 cache_dir=None, encoders=None, face_tools=None, init=None, encoder_config=None, backbone="",
                 val_manifest=None, val_fraction=0.05, resume=None, precompute_only=False, report=None,
                 device="cpu", compute_dtype=None):
    """Manifest -> cache -> train. Bad rows are reported (row number and reason, also to out/skipped.txt) and
    skipped. Returns the Trainer (or the examples with precompute_only)."""
    os.makedirs(out_dir, exist_ok=True)
    cache_dir = cache_dir or os.path.join(out_dir, "cache")
    skipped = []

    def say(msg):
        skipped.append(msg)
        (report or (lambda m: print(f"[wanid.train] ERROR {m}", file=sys.stderr, flush=True)))(msg)

    def load(path):
        rows, problems = read_manifest(path)
        for p in problems:
            say(f"{p} -- row skipped")
        examples, _ = build_cache(rows, settings, cache_dir, encoders, face_tools, report=say,
                                  progress=config.progress)
        return examples

    examples = load(manifest)
    val = load(val_manifest) if val_manifest else []
    with open(os.path.join(out_dir, "skipped.txt"), "w") as f:
        f.write("".join(m + "\n" for m in skipped))
    if precompute_only:
        return examples
    train, held = (examples, []) if val_manifest else split_validation(examples, val_fraction, seed=config.seed)
    val = val or held
    if init is None:
        cfg = SlotIDConfig(**(encoder_config or {}))
        init = fresh_checkpoint(int(diffusion_model.dim), len(diffusion_model.blocks), cfg, backbone=backbone,
                                seed=config.seed)
    elif isinstance(init, str):
        init = load_checkpoint(init)
    print(f"[wanid.train] {len(train)} training and {len(val)} validation examples, {len(skipped)} rows skipped",
          file=sys.stderr, flush=True)
    trainer = Trainer(diffusion_model, init, train, val, config, out_dir, device=device, backbone=backbone,
                      compute_dtype=compute_dtype)
    if resume:
        where = out_dir if resume == "auto" else resume
        if resume != "auto" or os.path.isfile(os.path.join(out_dir, "latest.json")):
            step = trainer.resume(where)
            print(f"[wanid.train] resumed at step {step}", file=sys.stderr, flush=True)
            _truncate_log(os.path.join(out_dir, "log.jsonl"), step)
    try:
        trainer.train(log_file=os.path.join(out_dir, "log.jsonl"))
    finally:
        trainer.close()
    return trainer


def _truncate_log(path, step):
    """Drop log lines after the resumed step (a crashed run may have logged steps it never saved)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(keep)


def parser():
    d = TrainConfig()
    s = PrecomputeSettings()
    ap = argparse.ArgumentParser(prog="python -m wanid.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("models (names in ComfyUI's model folders, or paths)")
    g.add_argument("--comfyui", required=True, help="the ComfyUI install whose loaders and model folders to use")
    g.add_argument("--unet", required=True, help="Wan T2V diffusion model (models/diffusion_models)")
    g.add_argument("--vae", required=True, help="Wan VAE (models/vae)")
    g.add_argument("--text-encoder", required=True, help="umT5-XXL (models/text_encoders)")
    g.add_argument("--weight-dtype", default=None, choices=["default", "bf16", "fp16", "fp32", "fp8_e4m3fn",
                                                              "fp8_e5m2"],
                   help="storage dtype of the frozen DiT (default: bf16 with --bf16, else ComfyUI's choice)")
    g.add_argument("--backbone", default="", help="backbone label stored in the checkpoint (wan2.1-t2v-14b, ...)")
    g.add_argument("--init", default=None, help="a Slot-ID checkpoint to start from (default: a fresh one)")
    g.add_argument("--encoder-config", default="{}", help="JSON overriding SlotIDConfig fields of a fresh start")
    g.add_argument("--insightface", default=None, help="insightface folder (default: COMFYUI/models/insightface)")
    g.add_argument("--detector", default="auto", help="auto | antelopev2 | buffalo_l | retinaface_mobilenet")
    g.add_argument("--face-parsing", default=None,
                   help="BiSeNet parsing_bisenet.pth (default: COMFYUI/models/face_parsing/ if present; "
                        "'none': the landmark-ellipse fallback)")
    g.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU (tests, debugging)")
    g = ap.add_argument_group("data")
    g.add_argument("--manifest", required=True, help="JSON-lines rows: reference, target, caption (docs/training.md)")
    g.add_argument("--val-manifest", default=None, help="validation rows (default: hold out --val-fraction)")
    g.add_argument("--val-fraction", type=float, default=0.05)
    g.add_argument("--out", required=True, help="output folder (checkpoints, state, logs)")
    g.add_argument("--cache", default=None, help="cache folder (default: OUT/cache)")
    g.add_argument("--width", type=int, default=s.width)
    g.add_argument("--height", type=int, default=s.height)
    g.add_argument("--frames", type=int, default=s.frames, help="target frames, 1 + 4k")
    g.add_argument("--fps", type=float, default=s.fps)
    g.add_argument("--ref-frames", type=int, default=s.ref_frames)
    g.add_argument("--min-ref-faces", type=int, default=s.min_ref_faces)
    g.add_argument("--precompute-only", action="store_true", help="fill the cache and stop")
    g = ap.add_argument_group("training")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--lr", type=float, default=d.lr, help="LoRA learning rate")
    g.add_argument("--lr-encoder", type=float, default=d.lr_encoder, help="encoder learning rate (0: --lr)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--batch", type=int, default=d.batch, help="examples per step (accumulated one by one)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip)
    g.add_argument("--shift", type=float, default=d.shift, help="sigma shift (5.0 for 480p, as at inference)")
    g.add_argument("--face-loss-prob", type=float, default=d.face_loss_prob)
    g.add_argument("--face-background", type=float, default=d.face_background)
    g.add_argument("--ref-swap", type=float, default=d.ref_swap)
    g.add_argument("--text-len", type=int, default=d.text_len)
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--save-every", type=int, default=d.save_every)
    g.add_argument("--val-every", type=int, default=d.val_every)
    g.add_argument("--val-sigmas", type=int, default=d.val_sigmas)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue a run: a .state.pt file, or (no value) the latest state in --out")
    g.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[wanid.train] %(message)s")
    from . import comfy_host

    comfyui = comfy_host.import_comfyui(args.comfyui, cpu=args.cpu)
    config = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__
                            if k != "progress" and hasattr(args, k)}, progress=not args.no_progress)
    settings = PrecomputeSettings(width=args.width, height=args.height, frames=args.frames, fps=args.fps,
                                  ref_frames=args.ref_frames, min_ref_faces=args.min_ref_faces)
    encoder_config = json.loads(args.encoder_config)
    init = args.init
    pool = (load_checkpoint(init).config if init else SlotIDConfig(**encoder_config)).pool
    settings.crop_latents = pool > 0

    weight_dtype = args.weight_dtype or ("bf16" if args.bf16 else "default")
    patcher, dm = comfy_host.load_backbone(args.unet, weight_dtype)
    latent_format = patcher.model.latent_format
    encoders = Lazy(encoders_name(args.vae, args.text_encoder, type(latent_format).__name__),
                    lambda: comfy_host.ComfyEncoders(args.vae, args.text_encoder, latent_format))
    insightface = args.insightface or os.path.join(comfyui, "models", "insightface")
    parsing = None if (args.face_parsing or "").lower() == "none" else args.face_parsing
    if args.face_parsing is None:
        default = os.path.join(comfyui, "models", "face_parsing", "parsing_bisenet.pth")
        parsing = default if os.path.isfile(default) else None
    tools = Lazy(face_tools_name(args.detector, insightface, parsing),
                 lambda: load_face_tools(args.detector, insightface, parsing))
    run_training(args.manifest, args.out, dm, config=config, settings=settings, cache_dir=args.cache,
                 encoders=encoders, face_tools=tools, init=init, encoder_config=encoder_config,
                 backbone=args.backbone, val_manifest=args.val_manifest, val_fraction=args.val_fraction,
                 resume=args.resume, precompute_only=args.precompute_only, device=comfy_host.device(),
                 compute_dtype=comfy_host.compute_dtype(patcher, args.bf16))
    return 0


if __name__ == "__main__":
    sys.exit(main())
