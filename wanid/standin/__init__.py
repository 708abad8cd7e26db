"""Stand-In (arXiv 2508.07901) in plain torch: checkpoint reading, reference positions, the reference LoRA and
the reference branch of restricted self-attention. No ComfyUI import: the glue in nodes/ passes in the host's
modules and functions (rope, attention, casting)."""
