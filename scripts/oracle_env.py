"""What scripts/standin_oracle_env.py and scripts/lynx_oracle_env.py share: an environment to run one method's
OFFICIAL code in, built once, both parts outside the repository (the official code is never committed or vendored):
- a venv under ~/.cache keyed by what it installs: the shared torch layer (seen through a .pth file, as
  scripts/test.py does) plus the method's pins;
- a copy of the official repository, extracted from a git directory or copied from a folder, into ~/.cache.

Standard library only. Each script makes one `OracleEnv` and calls its `main`."""
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


class OracleEnv:
    """name: 'standin' / 'lynx' (venv wanid-<name>-oracle-<key>, copy wanid-<name>-official); pins: what the venv
    installs beside the torch layer (part of its key); marker: a file only the official repository has; github:
    'owner/repo', for messages; env_var: where a user names the repository (WANID_<NAME>_REPO); default_source:
    a copy this machine keeps, used when neither --repo nor env_var is given."""

    def __init__(self, name, pins, marker, github, env_var, default_source=None):
        self.name, self.pins, self.marker, self.github = name, list(pins), marker, github
        self.env_var, self.default_source = env_var, default_source
        self.official_dir = CACHE / f"wanid-{name}-official"

    def log(self, msg):
        print(f"[{self.name}-oracle] {msg}", file=sys.stderr, flush=True)

    def venv_path(self, build=True):
        import test as suite  # scripts/test.py: the shared torch layer
        if build:
            torch_site = suite.torch_layer()
        else:  # where it would be, without building it
            layer = CACHE / f"wanid-torch-{suite.digest(*suite.torch_pins(), suite.python_version())}"
            torch_site = suite.site_packages(layer)
        key = hashlib.sha256("\n".join([str(torch_site), suite.python_version(), *self.pins]).encode()).hexdigest()
        return CACHE / f"wanid-{self.name}-oracle-{key[:16]}", torch_site, suite

    def build_venv(self, build=True):
        venv, torch_site, suite = self.venv_path(build)
        if (venv / ".complete").is_file() or not build:
            return venv
        self.log(f"building {venv} (once): {' '.join(self.pins)}")
        subprocess.run([suite.PY, "-m", "venv", "--clear", str(venv)], check=True)
        (suite.site_packages(venv) / "_wanid_torch_layer.pth").write_text(f"{torch_site}\n")
        py = venv / "bin" / "python"
        subprocess.run([str(py), "-m", "pip", "install", "-q", *self.pins], check=True)
        (venv / ".complete").touch()
        return venv

    def existing_repo(self):
        return self.official_dir if (self.official_dir / self.marker).is_file() else None

    def official_repo(self, source=None):
        """The extracted official repository, extracting it from `source` (a git dir or a plain folder) if needed."""
        if self.existing_repo():
            return self.official_dir
        source = source or os.environ.get(self.env_var) or (
            self.default_source if self.default_source and Path(self.default_source).exists() else None)
        if not source:
            return None
        source = Path(source)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"wanid-{self.name}-", dir=CACHE))
        try:
            if (source / self.marker).is_file():
                shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
            else:  # a (bare) git directory
                git = ["git", f"--git-dir={source}"]
                tree = subprocess.run(git + ["ls-tree", "-r", "HEAD"], check=True, capture_output=True,
                                      text=True).stdout.splitlines()
                # A snapshot may lack some large blobs (videos, images): archive the readable files only.
                paths = [ln.split("\t", 1)[1] for ln in tree if subprocess.run(
                    git + ["cat-file", "-e", ln.split()[2]], capture_output=True).returncode == 0]
                archive = subprocess.run(git + ["archive", "HEAD", "--", *paths], check=True,
                                         capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
            if not (tmp / self.marker).is_file():
                raise RuntimeError(f"{source} is not the {self.github} repository (no {self.marker})")
            if self.official_dir.exists():
                shutil.rmtree(self.official_dir)
            tmp.rename(self.official_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.official_dir

    def main(self, argv, description):
        """The scripts' command line: build what is missing (--print: only print what exists); two lines,
        `python=...` and `repo=...`; exit 1 with the reason when something cannot be made."""
        ap = argparse.ArgumentParser(description=description)
        ap.add_argument("--repo", help=f"a git directory or folder holding github.com/{self.github}")
        ap.add_argument("--print", action="store_true", help="only print what exists; build nothing")
        a = ap.parse_args(argv)
        venv = self.build_venv(build=not a.print)
        repo = self.official_repo(a.repo) if not a.print else self.existing_repo()
        has_venv = (venv / ".complete").is_file()
        print(f"python={venv / 'bin' / 'python' if has_venv else ''}")
        print(f"repo={repo or ''}")
        if not (has_venv and repo is not None):
            self.log("missing: " + ", ".join(n for n, v in (("venv", has_venv), ("repo", repo)) if not v)
                     + f" (give --repo PATH or {self.env_var} for the official repository)")
            return 1
        return 0
