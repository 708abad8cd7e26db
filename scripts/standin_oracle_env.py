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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle_env import OracleEnv  # noqa: E402  (scripts/ is not a package)

# The official requirements.txt pins transformers 4.46.2 (prompters import AutoTokenizer), einops 0.8.1,
# safetensors, ftfy, imageio; the preprocessor needs opencv, Pillow, tqdm, requests (torchvision is in the layer).
PINS = ["transformers==4.46.2", "einops==0.8.1", "safetensors", "ftfy", "imageio", "regex", "huggingface_hub",
        "typing_extensions", "tqdm", "requests", "Pillow", "opencv-python-headless", "numpy"]
ENV = OracleEnv("standin", PINS, marker="preprocessor/videomask_generator.py", github="WeChatCV/Stand-In",
                env_var="WANID_STANDIN_REPO", default_source="/work/.mirror/WeChatCV+Stand-In/repo")

if __name__ == "__main__":
    sys.exit(ENV.main(sys.argv[1:], __doc__.splitlines()[0]))
