"""python -m wanid COMMAND ...

Commands:
  queue      run a workflow on a ComfyUI server: upload the reference, fill the prompt, show progress,
             download the outputs (python -m wanid queue --help)
  workflows  rewrite example_workflows/ (UI + API twins) from the graphs in wanid/cli/templates.py

Other tools of the pack have their own modules: python -m wanid.train, python -m wanid.slot.init_checkpoint.
"""
import sys

COMMANDS = {
    "queue": "wanid.cli.queue",
    "workflows": "wanid.cli.templates",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"python -m wanid: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
