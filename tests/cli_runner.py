"""The queue command as a user runs it (`python -m wanid queue ...` in its own process), for the CLI tests (no
tests here).

    cli_command(*args) -> (argv, env)    the command line and environment (for tests that drive the process)
    run_cli(*args) -> CompletedProcess   run it to the end; its stderr must never hold a traceback
    write(tmp_path, name, api) -> Path   a workflow dict as a .json file to give it
"""
import json
import os
import subprocess
import sys

import wanid_testing


def cli_command(*args):
    env = dict(os.environ, PYTHONPATH=str(wanid_testing.REPO), PYTHONIOENCODING="utf-8")
    return [sys.executable, "-m", "wanid", "queue", *map(str, args)], env


def run_cli(*args, timeout=300, cwd=wanid_testing.REPO):
    cmd, env = cli_command(*args)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr  # every error is a message, never a raw traceback
    return r


def write(tmp_path, name, api):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(api), encoding="utf-8")
    return path
