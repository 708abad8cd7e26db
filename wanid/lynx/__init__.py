"""Lynx (ByteDance, arXiv 2509.15496) on the native Wan model: the ID adapter (ArcFace -> resampler -> 16 tokens
attended in cross-attention) and the Ref adapter (the reference's per-block features attended in self-attention).
Plain torch; the ComfyUI glue is nodes/lynx_patch.py."""
