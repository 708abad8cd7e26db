"""Which ComfyUI checkouts the tests run against: the one rule, used by scripts/test.py and tests/wanid_testing.py.

Standard library only (scripts/test.py runs it before any venv exists).

- COMFYUI_PATH set: the roots it names, separated like PATH (':' here, ';' on Windows); set but empty = none.
- else ~/ComfyUI, then every ~/ComfyUI-* beside it (one per version, e.g. ~/ComfyUI-0.33.0), in version order;
- else the ComfyUI checkout this pack sits in (custom_nodes/<pack>).
"""
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def is_comfyui(path):
    path = Path(path)
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def comfyui_version(root):
    """ComfyUI's own version string (comfyui_version.py), or "unknown"."""
    try:
        text = (Path(root) / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return m.group(1) if m else "unknown"


def _version_key(root):
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-]", comfyui_version(root)))


def explicit_roots():
    """The roots COMFYUI_PATH names (None when it is not set)."""
    if "COMFYUI_PATH" not in os.environ:
        return None
    return [Path(p).expanduser() for p in os.environ["COMFYUI_PATH"].split(os.pathsep) if p.strip()]


def find_roots():
    """Every ComfyUI root to test against, resolved, oldest version first. Explicit roots that are not a ComfyUI
    are kept (the caller reports them); found ones must be real checkouts."""
    named = explicit_roots()
    if named is not None:
        return [p.resolve() for p in named]
    home = Path.home()
    found = [p for p in [home / "ComfyUI", *sorted(home.glob("ComfyUI-*"))] if is_comfyui(p)]
    if not found and REPO.parent.name == "custom_nodes" and is_comfyui(REPO.parent.parent):
        found = [REPO.parent.parent]
    return sorted({p.resolve() for p in found}, key=_version_key)


if __name__ == "__main__":
    for root in find_roots():
        print(f"{comfyui_version(root)}\t{root}")
