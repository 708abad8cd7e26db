"""Build the bundle that carries the pack's GPU report to a bare GPU machine (no network, no ComfyUI; see
docs/testing.md, "On a GPU machine", and the notes in shared/design/gpu.md).

    python benchmarks/make_gpu_bundle.py [--comfyui ~/ComfyUI-0.33.0] [--wheels DIR]

writes gpu_bundle/wanid-gpu.tar.xz (git-ignored; about 50 MB), holding under wanid-gpu/:
  pack/     this pack's files (git ls-files: tracked and untracked-not-ignored)
  comfyui/  the ComfyUI tree without comfy_api_nodes/, blueprints/, tests*/, runpod_worker/, .git, models, caches
  site/     cp312 manylinux wheels of the ComfyUI 0.33 requirements a bare GPU machine lacks (av, comfy-kitchen,
            comfy-aimdo: its native wheel, with aimdo.so), unpacked; the AMD builds (comfy-kitchen's backends/hip,
            aimdo_rocm.so) dropped
  run.sh    sets PYTHONPATH, COMFYUI_PATH, PYTHONUNBUFFERED and runs benchmarks/gpu_report.py with its arguments
The wheels come from --wheels (a folder holding them) or from `pip download` (needs the package index once, here).
On the GPU machine (the device tool carries gpu_bundle/ with `carry`):
    tar xJf gpu_bundle/wanid-gpu.tar.xz -C /tmp && /tmp/wanid-gpu/run.sh
"""
import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "gpu_bundle"
WHEELS = ["av==18.1.0", "comfy-kitchen==0.2.31", "comfy-aimdo==0.4.13"]
SKIP_TOP = {"comfy_api_nodes", "blueprints", "runpod_worker", ".git", "models", "output", "input", "temp", "user",
            "custom_nodes", ".github", ".ci"}
RUN_SH = """#!/usr/bin/env bash
# The pack's GPU report on this machine: everything it needs is next to this script.
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here/site${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_PATH="$here/comfyui" PYTHONUNBUFFERED=1
pack="${WANID_PACK:-$here/pack}"
exec python3 "$pack/benchmarks/gpu_report.py" "$@"
"""


def comfyui_files(root):
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        top = rel.parts[0]
        if top in SKIP_TOP or top.startswith("tests") or "__pycache__" in rel.parts or not path.is_file():
            continue
        yield path, rel


def pack_files():
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for name in names:
        path = REPO / name
        if path.is_file() and not name.startswith("gpu_bundle/"):
            yield path, Path(name)


def wheels(folder):
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="wanid-wheels-"))
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp",
                        # comfy-aimdo's native build is tagged manylinux_2_17: with manylinux_2_28 alone pip
                        # takes its pure-Python wheel, whose init() finds no aimdo.so (no dynamic VRAM)
                        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                        "--platform", "manylinux2014_x86_64", "-d", str(folder), *WHEELS], check=True)
    found = []
    for spec in WHEELS:
        name = spec.split("==")[0].replace("-", "_")
        match = sorted(Path(folder).glob(f"{name}-{spec.split('==')[1]}-*.whl"), key=lambda p: "none-any" in p.name)
        if not match:
            sys.exit(f"--wheels {folder}: no wheel for {spec} there (expected {name}-...whl)")
        found.append(match[0])
    aimdo = next(w for w in found if w.name.startswith("comfy_aimdo"))
    if "comfy_aimdo/aimdo.so" not in zipfile.ZipFile(aimdo).namelist():
        sys.exit(f"{aimdo.name} has no comfy_aimdo/aimdo.so (the pure-Python wheel): dynamic VRAM would not start. "
                 "Use its manylinux wheel (pip download --platform manylinux_2_17_x86_64 comfy-aimdo==0.4.13).")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, default=Path(os.environ.get("COMFYUI_PATH", "~/ComfyUI-0.33.0")))
    ap.add_argument("--wheels", type=Path, default=None, help="a folder with the three wheels (else pip download)")
    args = ap.parse_args()
    comfy = args.comfyui.expanduser()
    if not (comfy / "comfy" / "model_management.py").is_file():
        sys.exit(f"--comfyui {comfy}: not a ComfyUI tree (no comfy/model_management.py)")
    OUT.mkdir(exist_ok=True)
    target = OUT / "wanid-gpu.tar.xz"
    with tarfile.open(target, "w:xz", preset=6) as tar:
        def add_bytes(name, data, mode=0o644):
            info = tarfile.TarInfo(f"wanid-gpu/{name}")
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for path, rel in pack_files():
            tar.add(path, f"wanid-gpu/pack/{rel}", recursive=False)
        for path, rel in comfyui_files(comfy):
            tar.add(path, f"wanid-gpu/comfyui/{rel}", recursive=False)
        for wheel in wheels(args.wheels):
            with zipfile.ZipFile(wheel) as z:
                for member in z.infolist():
                    if member.is_dir() or "/backends/hip/" in f"/{member.filename}" or \
                            member.filename.endswith("aimdo_rocm.so"):  # the AMD builds
                        continue
                    mode = 0o755 if member.filename.endswith(".so") or ".so." in member.filename else 0o644
                    add_bytes(f"site/{member.filename}", z.read(member), mode)
        add_bytes("run.sh", RUN_SH.encode(), 0o755)
    size = target.stat().st_size / 2**20
    print(f"{target} ({size:.1f} MiB). On the GPU machine:\n"
          f"    tar xJf gpu_bundle/wanid-gpu.tar.xz -C /tmp && /tmp/wanid-gpu/run.sh")
    if size > 60:
        print("warning: over 60 MiB; the device tool carries 64 MiB in all", file=sys.stderr)
    shutil.rmtree(OUT / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
