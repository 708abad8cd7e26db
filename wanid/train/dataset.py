"""The training manifest and the precomputed cache.

Manifest: JSON lines, one row per training example (blank lines and lines starting with # are ignored):

    {"reference": "clips/anna.mp4", "reference_start": 0.0, "reference_duration": 3.0,
     "target": "clips/anna.mp4", "target_start": 4.0, "caption": "a woman talks in a kitchen",
     "subject": "anna"}

Paths are relative to the manifest's folder. *_start / *_duration are seconds (duration 0 or absent: to the end;
the target uses its first `frames` frames at `fps` from target_start). `subject` (optional) groups rows of one
person: the trainer may then draw the reference from another row of the same subject (never one that overlaps
the target). The reference and the target must not overlap in time when they come from the same file.

Cache: one .safetensors per row in the cache folder, named by a key = sha256 of the two files' contents, the
windows, the caption and the precompute settings, so a changed file or setting computes anew and an unchanged one
is never computed twice. Tensors:

    target_latent     [C, F, H, W]  the target clip's Wan-VAE latent, normalised (the model's latent_format)
    target_face_mask  [F, H, W]     optional: 1 on the face in latent space (face-region loss weighting)
    context           [L, 4096]     the caption's umT5 rows without padding (padded with zero rows when training)
    ref_embeddings    [T, 512]      ArcFace, L2-normalised (FaceClip.embeddings)
    ref_landmarks     [T, 5, 2]     in [0, 1] crop coordinates (FaceClip.normalized_landmarks)
    ref_times         [T]           seconds
    ref_valid         [T]           uint8, 1 = the frame has a usable face
    ref_anchor        []            int64, the anchor frame
    ref_latents       [T, C, h, w]  optional: the 512x512 crops' normalised VAE latents (needed when pool > 0)
"""
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

import torch

CACHE_FORMAT = "wanid-train-cache"
CACHE_VERSION = "1"
REQUIRED = ("target_latent", "context", "ref_embeddings", "ref_landmarks", "ref_times", "ref_valid", "ref_anchor")
OPTIONAL = ("target_face_mask", "ref_latents")


class ManifestError(ValueError):
    """A manifest row that cannot be used; str() names the row and the reason."""

    def __init__(self, row, reason):
        super().__init__(f"manifest row {row}: {reason}")
        self.row = row
        self.reason = reason


class CacheError(ValueError):
    """A cache entry that is unreadable or inconsistent."""


@dataclass(frozen=True)
class Segment:
    path: str
    start: float = 0.0
    duration: float = 0.0  # 0: to the end

    def overlaps(self, other):
        if os.path.realpath(self.path) != os.path.realpath(other.path):
            return False
        end_a = self.start + self.duration if self.duration > 0 else math.inf
        end_b = other.start + other.duration if other.duration > 0 else math.inf
        return self.start < end_b and other.start < end_a


@dataclass
class ManifestRow:
    row: int  # 1-based line number in the manifest: what every message names
    reference: Segment
    target: Segment
    caption: str
    subject: str = ""
    extra: dict = field(default_factory=dict)

    def label(self):
        return f"row {self.row} ({os.path.basename(self.target.path)})"


def _number(raw, key, row, default):
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ManifestError(row, f"{key} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def parse_row(raw, row, base_dir):
    """One decoded JSON object -> ManifestRow (ManifestError naming the row otherwise). Files are not opened."""
    if not isinstance(raw, dict):
        raise ManifestError(row, f"expected a JSON object, got a JSON {type(raw).__name__}")
    for key in ("reference", "target"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            raise ManifestError(row, f"'{key}' must be a video path (a non-empty string), got {raw.get(key)!r}")
    caption = raw.get("caption", "")
    if not isinstance(caption, str):
        raise ManifestError(row, f"'caption' must be a string, got {type(caption).__name__}")

    def path(p):
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))

    ref = Segment(path(raw["reference"]), _number(raw, "reference_start", row, 0.0),
                  _number(raw, "reference_duration", row, 0.0))
    tgt = Segment(path(raw["target"]), _number(raw, "target_start", row, 0.0),
                  _number(raw, "target_duration", row, 0.0))
    if ref.overlaps(tgt):
        raise ManifestError(row, "the reference overlaps the target segment of the same video; the reference must "
                                 "come from another segment (the model would learn to copy it)")
    known = {"reference", "reference_start", "reference_duration", "target", "target_start", "target_duration",
             "caption", "subject"}
    subject = raw.get("subject", "")
    return ManifestRow(row, ref, tgt, caption, str(subject) if subject is not None else "",
                       {k: v for k, v in raw.items() if k not in known})


def read_manifest(path):
    """(rows, problems): the usable rows, and a ManifestError per row that is not (bad JSON, missing keys,
    overlapping segments). Missing files are found later, when the row is hashed or decoded."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    rows, problems = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(ManifestError(n, f"not valid JSON ({e.msg} at column {e.colno})"))
                continue
            try:
                rows.append(parse_row(raw, n, base))
            except ManifestError as e:
                problems.append(e)
    return rows, problems


def write_manifest(path, rows):
    """Rows (dicts) -> a JSON-lines file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


_DIGESTS = {}


def file_digest(path):
    """sha256 of a file's bytes (memoised by path, size and mtime: the manifest names each file many times)."""
    st = os.stat(path)  # FileNotFoundError for a missing file
    memo = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def entry_key(row: ManifestRow, settings: dict):
    """The cache key of a row: what the cached tensors depend on, nothing else (not the row number, not paths)."""
    for label, seg in (("reference", row.reference), ("target", row.target)):
        if not os.path.isfile(seg.path):
            raise ManifestError(row.row, f"{label} file not found: {seg.path}")
    ident = {"reference": [file_digest(row.reference.path), row.reference.start, row.reference.duration],
             "target": [file_digest(row.target.path), row.target.start, row.target.duration],
             "caption": row.caption, "settings": settings}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def entry_path(cache_dir, key):
    return os.path.join(cache_dir, f"{key}.safetensors")


def check_entry(tensors, where="cache entry"):
    """Raise CacheError unless the tensors form a consistent entry (see the module docstring)."""
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise CacheError(f"{where}: missing {', '.join(missing)}")
    x0 = tensors["target_latent"]
    if x0.dim() != 4:
        raise CacheError(f"{where}: target_latent must be [C, F, H, W], got {list(x0.shape)}")
    mask = tensors.get("target_face_mask")
    if mask is not None and tuple(mask.shape) != tuple(x0.shape[1:]):
        raise CacheError(f"{where}: target_face_mask {list(mask.shape)} does not match the latent grid "
                         f"{list(x0.shape[1:])}")
    ctx = tensors["context"]
    if ctx.dim() != 2 or ctx.shape[0] == 0:
        raise CacheError(f"{where}: context must be [L > 0, text_dim], got {list(ctx.shape)}")
    emb = tensors["ref_embeddings"]
    if emb.dim() != 2:
        raise CacheError(f"{where}: ref_embeddings must be [T, 512], got {list(emb.shape)}")
    t = emb.shape[0]
    for k, shape in (("ref_landmarks", (t, None, 2)), ("ref_times", (t,)), ("ref_valid", (t,))):
        s = tuple(tensors[k].shape)
        if len(s) != len(shape) or any(w is not None and a != w for a, w in zip(s, shape)):
            raise CacheError(f"{where}: {k} has shape {list(s)}, expected {[w if w else 'n' for w in shape]}")
    if "ref_latents" in tensors and (tensors["ref_latents"].dim() != 4 or tensors["ref_latents"].shape[0] != t):
        raise CacheError(f"{where}: ref_latents must be [T={t}, C, h, w], got {list(tensors['ref_latents'].shape)}")
    valid = tensors["ref_valid"].bool()
    if not bool(valid.any()):
        raise CacheError(f"{where}: no valid reference frame (no face in the reference clip)")
    anchor = int(tensors["ref_anchor"])
    if not 0 <= anchor < t or not bool(valid[anchor]):
        raise CacheError(f"{where}: ref_anchor {anchor} is not a valid frame of 0..{t - 1}")
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v.float()).all()):
            raise CacheError(f"{where}: {k} holds NaN or inf")


def save_entry(path, tensors, metadata=None):
    from safetensors.torch import save_file

    check_entry(tensors, os.path.basename(path))
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
    os.replace(tmp, path)  # atomic: an interrupted precompute never leaves a half-written entry behind
    return path


def load_entry(path):
    """The tensors of a cache entry, checked; CacheError when unreadable or inconsistent."""
    from safetensors import safe_open

    name = os.path.basename(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated, not safetensors, ...
        raise CacheError(f"cache entry {name} is unreadable ({type(e).__name__}: {str(e)[:200]})") from e
    if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
        raise CacheError(f"cache entry {name}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                         f"expected {CACHE_FORMAT} {CACHE_VERSION}")
    check_entry(tensors, f"cache entry {name}")
    return tensors


@dataclass
class Example:
    """One usable training row: its manifest row and its cached tensors."""
    row: ManifestRow
    tensors: dict
    key: str = ""

    @property
    def latent_shape(self):
        return tuple(self.tensors["target_latent"].shape)


def pad_reference(tensors, frames):
    """Pad (with invalid frames) or keep the reference fields to exactly `frames` frames, so every example's
    reference has the same T (the encoder's marginals ignore invalid frames)."""
    t = tensors["ref_embeddings"].shape[0]
    if t >= frames:
        return tensors
    out = dict(tensors)
    for k in ("ref_embeddings", "ref_landmarks", "ref_times", "ref_valid", "ref_latents"):
        if k in tensors:
            v = tensors[k]
            pad = torch.zeros((frames - t, *v.shape[1:]), dtype=v.dtype)
            if k == "ref_times":
                pad = pad + v[-1]
            out[k] = torch.cat([v, pad])
    return out


def pad_context(context, length):
    """[L, D] -> [max(L, length), D] with zero rows appended (Wan's umT5 conditioning pads with zeros to 512)."""
    if context.shape[0] >= length:
        return context
    return torch.cat([context, context.new_zeros(length - context.shape[0], context.shape[1])])


def split_validation(examples: List[Example], fraction: float, count: Optional[int] = None, seed=0):
    """(train, val): a fixed, seeded choice of `count` (or round(fraction * n), at least 1 when fraction > 0 and
    n >= 2) examples held out. Rows of one subject may fall on both sides; pass a separate --val-manifest to
    measure generalisation to unseen people."""
    n = len(examples)
    k = count if count is not None else (max(1, round(fraction * n)) if fraction > 0 and n >= 2 else 0)
    if k <= 0:
        return list(examples), []
    if k >= n:
        raise ValueError(f"validation would take {k} of {n} examples; lower --val-fraction")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    held = set(order[:k])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
