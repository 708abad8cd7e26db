"""Slot-ID: a reference clip's faces -> identity tokens prepended to Wan's text conditioning (docs/slot-id.md).

sinkhorn (log-domain entropic OT), reader (slot reader), tokenizer (frame tokens), encoder (SlotEncoder, config,
IdentityTokens), checkpoint (file format + cross-attention LoRA), routing_image, init_checkpoint (command).
Plain torch: no ComfyUI import here.
"""
