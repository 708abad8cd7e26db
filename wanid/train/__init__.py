"""Training the Slot-ID encoder and its cross-attention LoRA on a frozen Wan DiT (docs/training.md).

    python -m wanid.train --comfyui ~/ComfyUI --unet wan2.1_t2v_14B_bf16.safetensors --vae wan_2.1_vae.safetensors \
        --text-encoder umt5_xxl_fp8_e4m3fn_scaled.safetensors --manifest rows.jsonl --out runs/slot1
    python -m wanid.train.builder --videos clips/ --out rows.jsonl          (videos -> manifest rows)

losses (flow matching, shifted sigmas, face weighting), lora (trainable LoRA hooks), dataset (manifest, cache),
precompute (rows -> cache entries), trainer (the loop, checkpoints, resume), builder (dataset builder),
comfy_host (the only module that imports ComfyUI, from the path given on the command line).
"""
