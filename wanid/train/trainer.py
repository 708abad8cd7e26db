"""The Slot-ID trainer: SlotEncoder + cross-attention LoRA on a frozen Wan DiT, Wan's flow-matching objective.

One step, per example (a batch is accumulated example by example, so clips of any size mix and a 14B step holds
one clip's activations at a time):

    reference  the row's own, or with probability ref_swap another row's reference of the same subject that does
               not overlap this target (never the target itself: the model must not learn to copy)
    tokens     = SlotEncoder(reference face features)                 [A + S, 4096]
    context    = [tokens ; umT5 rows padded to text_len]               as IdentityTokenInject does at inference
    s          ~ shifted uniform (shift 5 = 480p);  x_s = (1 - s) x0 + s noise;  target = noise - x0
    loss       = MSE(DiT(x_s, 1000 s, context), target), face-weighted with probability face_loss_prob

Every random draw of step k comes from a generator seeded with (seed, k), and the data order from one seeded by
(seed, epoch), so a resumed run reproduces an uninterrupted one exactly. The DiT is used as ComfyUI built it
(its own modules, fp8/bf16 casting and offload); the LoRA rides on forward hooks (lora.py) and gradient
checkpointing on ComfyUI's own per-block replace hook. Every DiT call (and a checkpointed block's recompute in the
backward pass) runs inside host_mode, by default comfy_host.training_mode: ComfyUI's in_training flag, without
which newer ComfyUI runs RoPE in a kernel that has no autograd. This module does not import ComfyUI.
"""
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ..slot.checkpoint import SlotIDCheckpoint, load_checkpoint, save_checkpoint
from ..slot.encoder import SlotEncoder, batch_inputs
from ..tensor_file import read_tensor_file
from .comfy_host import training_mode  # imports no ComfyUI; a no-op without a loaded ComfyUI
from .dataset import pad_context, pad_reference
from .lora import CrossAttnLoRA
from .losses import (
    TIMESTEP_SCALE,
    face_weight,
    noisy_latent,
    sample_sigmas,
    validation_sigmas,
    weighted_mse,
)

log = logging.getLogger("wanid.train")
STATE_FORMAT = "wanid-slot-train-state"


@dataclass
class TrainConfig:
    steps: int = 3000
    lr: float = 1e-4             # LoRA
    lr_encoder: float = 0.0      # 0: same as lr
    weight_decay: float = 0.01
    warmup: int = 100            # linear warm-up steps
    batch: int = 1               # examples per optimizer step (accumulated)
    grad_clip: float = 1.0       # 0: off
    shift: float = 5.0           # Wan's sampling shift (5.0 at 480p, ComfyUI's ModelSamplingSD3 shift)
    face_loss_prob: float = 0.5  # ConsisID: probability of the face-region loss
    face_background: float = 0.0  # weight of non-face latents in a face-weighted step
    ref_swap: float = 0.5        # probability of another same-subject reference (rows with a subject)
    text_len: int = 512          # umT5 rows after padding (Wan pads to 512)
    bf16: bool = False
    grad_checkpointing: bool = False
    save_every: int = 500
    val_every: int = 250
    val_sigmas: int = 4
    seed: int = 0
    progress: bool = True

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)


class Trainer:
    def __init__(self, diffusion_model, init: SlotIDCheckpoint, train_set, val_set, config: TrainConfig, out_dir,
                 device="cpu", backbone="", report=None, compute_dtype=None, host_mode=None):
        if not train_set:
            raise ValueError("no usable training example (every manifest row was skipped; see the messages above)")
        self.cfg = config
        self.dm = diffusion_model
        self.host_mode = host_mode or training_mode  # a context manager factory around every DiT call
        self.device = torch.device(device)
        # activations: bf16 under --bf16, else what the host computes in (ComfyUI's manual-cast dtype)
        self.dtype = torch.bfloat16 if config.bf16 else (compute_dtype or torch.float32)
        self.train_set, self.val_set = list(train_set), list(val_set)
        self.out_dir = out_dir
        self.report = report or log.error
        self.backbone = backbone or init.backbone

        dim, num_blocks = int(diffusion_model.dim), len(diffusion_model.blocks)
        init.check_against(dim, num_blocks, "the training DiT")
        text_dim = diffusion_model.text_embedding[0].in_features
        if init.config.text_dim != text_dim:
            raise ValueError(f"encoder text_dim {init.config.text_dim} != the DiT's text input {text_dim}")
        for p in diffusion_model.parameters():
            p.requires_grad_(False)

        self.config = init.config
        self.encoder = SlotEncoder(init.config)
        self.encoder.load_state_dict(init.encoder_state, strict=True)
        self.encoder.to(self.device).train()
        self.lora = CrossAttnLoRA(num_blocks, dim, init.config.lora_rank, init.config.lora_alpha)
        self.lora.load_checkpoint_lora(init.lora)
        self.lora.to(self.device)
        self.lora.attach(diffusion_model)
        self.dim, self.num_blocks = dim, num_blocks

        lr_enc = config.lr_encoder or config.lr
        self.opt = torch.optim.AdamW([
            {"params": list(self.encoder.parameters()), "lr": lr_enc, "base_lr": lr_enc},
            {"params": list(self.lora.parameters()), "lr": config.lr, "base_lr": config.lr},
        ], weight_decay=config.weight_decay)
        self.step = 0
        self.history = []  # {"step", "loss"} and {"step", "val_loss"}

        self.frames = max(e.tensors["ref_embeddings"].shape[0] for e in self.train_set + self.val_set)
        self.by_subject = {}
        for i, e in enumerate(self.train_set):
            if e.row.subject:
                self.by_subject.setdefault(e.row.subject, []).append(i)

    # -------------------------------------------------------------------------------------------- the model call
    def close(self):
        self.lora.detach()

    def _block_options(self):
        if not self.cfg.grad_checkpointing:
            return {}

        def replace(i):
            block = self.dm.blocks[i]

            def run(img, txt, vec, pe, options):
                with self.host_mode():  # also when the backward pass recomputes it, outside any train_step
                    return block(img, e=vec, freqs=pe, context=txt, context_img_len=None,
                                 transformer_options=options)

            def ckpt_block(args, extra):
                # ComfyUI's per-block replace: the block is recomputed in the backward pass instead of keeping its
                # activations. Not extra["original_block"]: that closure reads the loop variable of Wan's
                # forward_orig, which points at the LAST block by the time the backward pass recomputes.
                img = checkpoint(run, args["img"], args["txt"], args["vec"], args["pe"], args["transformer_options"],
                                 use_reentrant=False)
                return {"img": img}
            return ckpt_block

        return {"patches_replace": {"dit": {("double_block", i): replace(i) for i in range(self.num_blocks)}}}

    def encode_reference(self, t):
        """Cached ref_* tensors -> identity tokens [1, A + S, text_dim] (float32 from the encoder)."""
        t = pad_reference(t, self.frames)
        if self.config.pool > 0 and "ref_latents" not in t:
            raise ValueError("the encoder config has pool > 0 but the cache holds no ref_latents")
        ref_latents = t["ref_latents"].float() if self.config.pool > 0 else None
        # as SlotEncoder.encode_clip prepares them at inference
        inputs = batch_inputs(t["ref_embeddings"].float(), t["ref_landmarks"].float(), t["ref_times"].float(),
                              t["ref_valid"], t["ref_anchor"], ref_latents, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            tokens, _ = self.encoder(**inputs)
        return tokens.float()

    def velocity(self, x_t, sigma, context):
        """The DiT's prediction (float32) for x_t [1, C, F, H, W] at noise level sigma [1]."""
        with self.host_mode():
            out = self.dm(x_t.to(self.dtype), (sigma * TIMESTEP_SCALE).to(self.device), context.to(self.dtype),
                          transformer_options=self._block_options())
        return out.float()

    def example_loss(self, example, reference, sigma, noise, use_face):
        t = example.tensors
        x0 = t["target_latent"].float()[None].to(self.device)
        tokens = self.encode_reference(reference)
        text = pad_context(t["context"].float(), self.cfg.text_len)[None].to(self.device)
        context = torch.cat([tokens, text], dim=1)
        x_t, target = noisy_latent(x0, noise.to(self.device), sigma.to(self.device))
        pred = self.velocity(x_t, sigma, context)
        mask = t.get("target_face_mask")
        weight = face_weight(None if mask is None else mask[None].to(self.device), use_face.to(self.device),
                             self.cfg.face_background)
        return weighted_mse(pred, target, weight)[0]

    # -------------------------------------------------------------------------------------------- data and noise
    def _order(self, epoch):
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_set), generator=g).tolist()

    def _pick(self, k):
        n = len(self.train_set)
        return self._order(k // n)[k % n]

    def _reference_for(self, idx, gen):
        example = self.train_set[idx]
        pool = [j for j in self.by_subject.get(example.row.subject, []) if j != idx
                and not self.train_set[j].row.reference.overlaps(example.row.target)]
        coin = float(torch.rand((), generator=gen))
        choice = int(torch.randint(len(pool), (), generator=gen)) if pool else -1
        if pool and coin < self.cfg.ref_swap:
            return self.train_set[pool[choice]].tensors
        return example.tensors

    def lr_factor(self, step):
        return min(1.0, step / self.cfg.warmup) if self.cfg.warmup > 0 else 1.0

    # -------------------------------------------------------------------------------------------- steps
    def train_step(self):
        """One optimizer step (self.step + 1). Returns the mean loss of its examples."""
        with self.host_mode():  # forward and backward
            return self._train_step()

    def _train_step(self):
        step = self.step + 1
        gen = torch.Generator().manual_seed(self.cfg.seed * 7_919 + step * 104_729 + 1)
        for group in self.opt.param_groups:
            group["lr"] = group["base_lr"] * self.lr_factor(step)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for j in range(self.cfg.batch):
            idx = self._pick((step - 1) * self.cfg.batch + j)
            example = self.train_set[idx]
            reference = self._reference_for(idx, gen)
            sigma = sample_sigmas(1, self.cfg.shift, gen)
            noise = torch.randn(example.latent_shape, generator=gen)[None]
            use_face = torch.rand(1, generator=gen) < self.cfg.face_loss_prob
            loss = self.example_loss(example, reference, sigma, noise, use_face) / self.cfg.batch
            if not bool(torch.isfinite(loss.detach())):
                raise FloatingPointError(f"step {step}: the loss is {float(loss)} on manifest row {example.row.row}; "
                                         f"lower --lr or check the cache entry {example.key}")
            loss.backward()
            total += float(loss.detach())
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable(), self.cfg.grad_clip)
        self.opt.step()
        self.step = step
        self.history.append({"step": step, "loss": total})
        return total

    def trainable(self):
        return list(self.encoder.parameters()) + list(self.lora.parameters())

    @torch.no_grad()
    def validate(self, examples=None):
        """The mean flow-matching loss over examples x a fixed grid of noise levels with fixed noise (no face
        weighting, own reference): comparable between steps and between runs."""
        examples = self.val_set if examples is None else examples
        if not examples:
            return float("nan")
        was = self.encoder.training
        self.encoder.eval()
        sigmas = validation_sigmas(self.cfg.val_sigmas, self.cfg.shift)
        losses = []
        try:
            with self.host_mode():  # the numerics training sees
                for i, example in enumerate(examples):
                    gen = torch.Generator().manual_seed(self.cfg.seed + 31 * i + 17)
                    for s in sigmas:
                        noise = torch.randn(example.latent_shape, generator=gen)[None]
                        losses.append(float(self.example_loss(example, example.tensors, s.reshape(1), noise,
                                                              torch.zeros(1, dtype=torch.bool))))
        finally:
            self.encoder.train(was)
        return sum(losses) / len(losses)

    # -------------------------------------------------------------------------------------------- checkpoints
    def export(self) -> SlotIDCheckpoint:
        state = {k: v.detach().float().cpu().clone() for k, v in self.encoder.state_dict().items()}
        return SlotIDCheckpoint(config=self.config, encoder_state=state, lora=self.lora.export(),
                                backbone=self.backbone, dim=self.dim, num_blocks=self.num_blocks)

    def save(self):
        """Write step_NNNNNN.safetensors (the inference format: loads in WanIDSlotIDLoader) and its training
        state (optimizer, step, RNG, history); point latest.json at them."""
        os.makedirs(self.out_dir, exist_ok=True)
        name = f"step_{self.step:06d}"
        ckpt_path = os.path.join(self.out_dir, f"{name}.safetensors")
        save_checkpoint(self.export(), ckpt_path)
        state = {"format": STATE_FORMAT, "step": self.step, "optimizer": self.opt.state_dict(),
                 "torch_rng": torch.get_rng_state(), "config": self.cfg.to_json(),
                 "history": json.dumps(self.history), "checkpoint": os.path.basename(ckpt_path)}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        state_path = os.path.join(self.out_dir, f"{name}.state.pt")
        torch.save(state, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        with open(os.path.join(self.out_dir, "latest.json.tmp"), "w") as f:
            json.dump({"step": self.step, "checkpoint": os.path.basename(ckpt_path),
                       "state": os.path.basename(state_path)}, f)
        os.replace(os.path.join(self.out_dir, "latest.json.tmp"), os.path.join(self.out_dir, "latest.json"))
        return ckpt_path, state_path

    def resume(self, state_path):
        """Continue from a saved state (.state.pt, or a folder holding latest.json)."""
        if os.path.isdir(state_path):
            with open(os.path.join(state_path, "latest.json")) as f:
                state_path = os.path.join(state_path, json.load(f)["state"])
        state = read_tensor_file(state_path, "training state", "Resume from another step_NNNNNN.state.pt, or start "
                                 "the run again.", instead="a state this pack's trainer saved (only tensors)")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{state_path} is not a Slot-ID training state")
        saved = json.loads(state["config"])
        for key in ("seed", "batch", "shift"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(f"--resume: the run was started with {key}={saved.get(key)}, now "
                                 f"{getattr(self.cfg, key)}; a resumed run must keep it to continue the same run")
        ckpt = load_checkpoint(os.path.join(os.path.dirname(state_path), state["checkpoint"]))
        ckpt.check_against(self.dim, self.num_blocks, "the training DiT")
        self.encoder.load_state_dict({k: v.to(self.device) for k, v in ckpt.encoder_state.items()}, strict=True)
        self.lora.load_checkpoint_lora(ckpt.lora)
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return self.step

    # -------------------------------------------------------------------------------------------- the loop
    def train(self, log_file=None):
        """Run to cfg.steps, validating every val_every steps and saving every save_every steps (and at the end).
        Returns the history."""
        cfg = self.cfg
        bar = None
        if cfg.progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step")
            except ImportError:
                pass
        logf = open(log_file, "a") if log_file else None
        t0 = time.time()
        try:
            if self.step == 0 and self.val_set and cfg.val_every > 0:
                self._record({"step": 0, "val_loss": self.validate()}, logf)
            while self.step < cfg.steps:
                loss = self.train_step()
                if logf:
                    logf.write(json.dumps({"step": self.step, "loss": loss}) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                elif self.step % 10 == 0:
                    log.info("step %d/%d loss %.4f (%.1f s)", self.step, cfg.steps, loss, time.time() - t0)
                if self.val_set and cfg.val_every > 0 and self.step % cfg.val_every == 0:
                    self._record({"step": self.step, "val_loss": self.validate()}, logf)
                if (cfg.save_every > 0 and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            if logf:
                logf.close()
        return self.history

    def _record(self, entry, logf):
        self.history.append(entry)
        if logf:
            logf.write(json.dumps(entry) + "\n")
        log.info("step %d: validation loss %.5f", entry["step"], entry["val_loss"])
