"""The environment the Stand-In equivalence tests run the OFFICIAL Stand-In code in, built once.

Two things, both outside the repository (the official code is never committed or vendored here):
- a venv under ~/.cache keyed by what it installs: the shared torch layer (seen through a .pth file, as
  scripts/test.py does) plus what the official code imports (its requirements.txt pins where a pin matters;
  insightface, facexlib and onnxruntime are left out: the tests replace the detector and the parser in the
  official process, and no weights can be downloaded);
- a copy of the WHOLE official repository (github.com/WeChatCV/Stand-In: pipelines, models, preprocessor,
  schedulers, test inputs), extracted from a git directory or copied from a folder given with --repo (or
  WANID_STANDIN_REPO), into ~/.cache/wanid-standin-official/. The face swap and the VACE tests both use it.

Standard library only. Usage:
    python scripts/standin_oracle_env.py [--repo PATH] [--print]    # build what is missing; --print: paths only
Prints two lines, `python=...` and `repo=...`; exit 1 with the reason when something cannot be made.
The default --repo is the mirror this machine keeps (/work/.mirror/WeChatCV+Stand-In/repo) when it exists.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

CACHE = Path(os.environ.get("WANID_CACHE", Path.home() / ".cache"))
# The official requirements.txt pins transformers 4.46.2 (prompters import AutoTokenizer), einops 0.8.1,
# safetensors, ftfy, imageio; the preprocessor needs opencv, Pillow, tqdm, requests (torchvision is in the layer).
PINS = ["transformers==4.46.2", "einops==0.8.1", "safetensors", "ftfy", "imageio", "regex", "huggingface_hub",
        "typing_extensions", "tqdm", "requests", "Pillow", "opencv-python-headless", "numpy"]
OFFICIAL_DIR = CACHE / "wanid-standin-official"
MARKER = "preprocessor/videomask_generator.py"
DEFAULT_SOURCE = "/work/.mirror/WeChatCV+Stand-In/repo"


def log(msg):
    print(f"[standin-oracle] {msg}", file=sys.stderr, flush=True)


def venv_path(build=True):
    import test as suite  # scripts/test.py: the shared torch layer
    if build:
        torch_site = suite.torch_layer()
    else:  # where it would be, without building it
        layer = CACHE / f"wanid-torch-{suite.digest(*suite.torch_pins(), suite.python_version())}"
        torch_site = suite.site_packages(layer)
    key = hashlib.sha256("\n".join([str(torch_site), suite.python_version(), *PINS]).encode()).hexdigest()[:16]
    return CACHE / f"wanid-standin-oracle-{key}", torch_site, suite


def build_venv(build=True):
    venv, torch_site, suite = venv_path(build)
    if (venv / ".complete").is_file() or not build:
        return venv
    log(f"building {venv} (once): {' '.join(PINS)}")
    subprocess.run([suite.PY, "-m", "venv", "--clear", str(venv)], check=True)
    (suite.site_packages(venv) / "_wanid_torch_layer.pth").write_text(f"{torch_site}\n")
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PINS], check=True)
    (venv / ".complete").touch()
    return venv


def official_repo(source=None):
    """The extracted official repository, extracting it from `source` (a git dir or a plain folder) if needed."""
    if (OFFICIAL_DIR / MARKER).is_file():
        return OFFICIAL_DIR
    source = source or os.environ.get("WANID_STANDIN_REPO") or (DEFAULT_SOURCE if Path(DEFAULT_SOURCE).exists()
                                                               else None)
    if not source:
        return None
    source = Path(source)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="wanid-standin-", dir=CACHE))
    try:
        if (source / MARKER).is_file():
            shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
        else:  # a (bare) git directory
            git = ["git", f"--git-dir={source}"]
            tree = subprocess.run(git + ["ls-tree", "-r", "HEAD"], check=True, capture_output=True,
                                  text=True).stdout.splitlines()
            # A snapshot may lack some large blobs (test/input/woman.mp4 here): archive the readable files only.
            paths = [ln.split("\t", 1)[1] for ln in tree if subprocess.run(
                git + ["cat-file", "-e", ln.split()[2]], capture_output=True).returncode == 0]
            archive = subprocess.run(git + ["archive", "HEAD", "--", *paths], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        if not (tmp / MARKER).is_file():
            raise RuntimeError(f"{source} is not the WeChatCV/Stand-In repository (no {MARKER})")
        if OFFICIAL_DIR.exists():
            shutil.rmtree(OFFICIAL_DIR)
        tmp.rename(OFFICIAL_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return OFFICIAL_DIR


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", help="a git directory or folder holding github.com/WeChatCV/Stand-In")
    ap.add_argument("--print", action="store_true", help="only print what exists; build nothing")
    a = ap.parse_args(argv)
    venv = build_venv(build=not a.print)
    repo = official_repo(a.repo) if not a.print else (OFFICIAL_DIR if (OFFICIAL_DIR / MARKER).is_file() else None)
    ok = (venv / ".complete").is_file() and repo is not None
    print(f"python={venv / 'bin' / 'python' if (venv / '.complete').is_file() else ''}")
    print(f"repo={repo or ''}")
    if not ok:
        log("missing: " + ", ".join(n for n, v in (("venv", (venv / ".complete").is_file()), ("repo", repo)) if not v)
            + " (give --repo PATH or WANID_STANDIN_REPO for the official repository)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
