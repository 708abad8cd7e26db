"""Face crop, alignment and parsing (plain torch/numpy, no ComfyUI)."""
