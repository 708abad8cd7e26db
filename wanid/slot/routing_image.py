"""The routing plan as a picture: slots (rows) x frames (columns), each cell a block of pixels coloured by the
share of the slot's mass the frame got. Invalid frames are drawn as a grey hatch so they read as "dropped",
not as "unused"."""
import torch


def _colormap(x):
    """[..] in [0, 1] -> [.., 3]: a dark-blue -> yellow ramp (viridis-like, readable in grey too)."""
    stops = torch.tensor([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551],
                          [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]], dtype=torch.float32)
    pos = x.clamp(0, 1) * (len(stops) - 1)
    lo = pos.floor().long().clamp(max=len(stops) - 2)
    w = (pos - lo.float())[..., None]
    return stops[lo] * (1 - w) + stops[lo + 1] * w


def routing_image(plan, valid=None, cell=32, gap=2):
    """plan [S, T] (rows sum to 1) -> IMAGE [1, H, W, 3] in [0, 1]. Each row is scaled by its own maximum so
    every slot's preference is visible; a white gap separates cells."""
    plan = plan.detach().float().cpu()
    s, t = plan.shape
    norm = plan / plan.amax(dim=1, keepdim=True).clamp_min(1e-12)
    colors = _colormap(norm)  # [S, T, 3]
    if valid is not None:
        hatch = torch.tensor([0.55, 0.55, 0.55])
        colors[:, ~valid.bool().cpu()] = hatch
    step = cell + gap
    img = torch.ones(s * step + gap, t * step + gap, 3)
    for i in range(s):
        for j in range(t):
            y, x = gap + i * step, gap + j * step
            img[y:y + cell, x:x + cell] = colors[i, j]
            if valid is not None and not bool(valid[j]):
                stripes = (torch.arange(cell)[:, None] + torch.arange(cell)[None, :]) % 8 < 2
                img[y:y + cell, x:x + cell][stripes] = 0.8
    return img[None]
