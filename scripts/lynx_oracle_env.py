"""The environment the Lynx equivalence tests run the OFFICIAL Lynx code in (tests/lynx_oracle.py), built once.

Two things, both outside the repository (the official code is never committed or vendored here):
- a venv under ~/.cache keyed by what it installs: the shared torch layer (seen through a .pth file, as
  scripts/test.py does) plus diffusers/transformers at the versions the official requirements.txt pins;
- a copy of the official repository (github.com/bytedance/lynx, Apache-2.0), extracted from a git directory or
  copied from a folder given with --repo (or WANID_LYNX_REPO), into ~/.cache/wanid-lynx-official/.

Standard library only. Usage:
    python scripts/lynx_oracle_env.py [--repo PATH] [--print]    # build what is missing; --print: paths only
Prints two lines, `python=...` and `repo=...`; exit 1 with the reason when something cannot be made.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle_env import OracleEnv  # noqa: E402  (scripts/ is not a package)

# The official requirements.txt pins diffusers 0.33.1 and transformers 4.50.2; only the model code runs (no
# text encoder, no VAE download), so nothing else of that list is needed.
PINS = ["diffusers==0.33.1", "transformers==4.50.2", "safetensors", "einops", "ftfy", "sentencepiece",
        "scikit-image", "opencv-python-headless"]
ENV = OracleEnv("lynx", PINS, marker="modules/full/attention_processor.py", github="bytedance/lynx",
                env_var="WANID_LYNX_REPO")

if __name__ == "__main__":
    sys.exit(ENV.main(sys.argv[1:], __doc__.splitlines()[0]))
