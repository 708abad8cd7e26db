"""Run a workflow on a ComfyUI server without the browser.

    python -m wanid queue example_workflows/api/standin_wan21_t2v_14b.json --server http://127.0.0.1:8188 \\
        --reference clip.mp4 --prompt "a man rides a bicycle through a park" --set 12.steps=30 --seed 7

Steps: load the workflow (API format; a UI workflow is converted with the server's node schemas), upload the
reference (a video goes to every Reference Clip Loader, an image to LoadImage or, without one, into the clip
loaders' `images` input) and, with --video, the video the workflow works on (face swap's target, VACE's pose
video: the loader titled "Target video..."), write the prompt into the positive text encoder (the node titled
"Positive...", else the one feeding the samplers' positive input), apply --set and --seed, check the workflow
against the server (every --set input exists on its node; every input file and model file the workflow names is
on the server or being uploaded), queue it, show the server's progress, download what the output nodes saved into
--out (the current folder by default; a file already there is kept and the new one gets a free name, "-2",
"-3"... added, unless --force). On --timeout or Ctrl-C the prompt is cancelled on the server: removed from the
queue while it waits, interrupted while it runs (only this prompt: another one running is left alone).

Exit status: 0 done; 1 the run failed on the server (its error message is printed), the server could not be
reached, or --timeout passed (the prompt is cancelled); 2 bad arguments (a bad --server URL or --timeout, a
missing or unreadable workflow, an unknown --set input or a --set link to a node or output the workflow lacks, a
file the server does not have), nothing queued; or the server refused the
workflow (its node_errors are printed; when only some outputs fail validation ComfyUI would run the rest: the
command cancels it unless --allow-partial); 130 interrupted with Ctrl-C (the prompt is cancelled).
Standard library only, plus websocket-client for live progress (without it the command polls and shows none).
"""
import argparse
import difflib
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path

from . import workflow as wf
from .client import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, Client, QueueError, TimedOut,
                     open_ws, wait_history, wait_ws)
from .progress import Progress
from ..model_inputs import INPUTS as MODEL_INPUTS

UPLOAD_KEYS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
# (node type, file input) -> inputs that, when connected, are used instead of the file (it is then not read)
SUPERSEDED_BY = {("WanIDReferenceClipLoader", "video"): ("images", "video_in")}


def format_node_errors(response, api):
    """The /prompt refusal as readable lines: the error, then per node its input and what was wrong."""
    lines = []
    err = response.get("error")
    if isinstance(err, dict):
        head = err.get("message") or err.get("type") or "refused"
        lines.append(f"The server refused the workflow: {head}")
        if err.get("details"):
            lines.append(f"  {err['details']}")
    elif err:
        lines.append(f"The server refused the workflow: {err}")
    else:
        lines.append("The server refused the workflow: " + json.dumps(response)[:2000])
    for nid, info in sorted((response.get("node_errors") or {}).items(), key=lambda kv: wf._id_key(str(kv[0]))):
        node = api.get(str(nid), {})
        ctype = info.get("class_type") or node.get("class_type", "?")
        title = wf.title_of(node)
        lines.append(f"  node {nid} ({ctype}{': ' + title if title and title != ctype else ''}):")
        for e in info.get("errors", []):
            extra = e.get("extra_info") or {}
            name = extra.get("input_name")
            text = e.get("message") or e.get("type", "error")
            details = e.get("details")
            if details and details != name and details not in text:
                text += f" ({details})"
            lines.append(f"    {name + ': ' if name else ''}{text} [{e.get('type', '?')}]")
            if "received_value" in extra and str(extra["received_value"]) not in lines[-1]:
                lines.append(f"      received: {extra['received_value']!r}")
            row = MODEL_INPUTS.get(name)
            if e.get("type") == "value_not_in_list" and row is not None:
                lines.append(f"      (that {row.noun} is not installed on the server: it goes in "
                             f"ComfyUI/models/{row.folder}/, {row.what}; then refresh)")
    return "\n".join(lines)


def format_execution_error(data, api):
    nid = data.get("node_id")
    node = api.get(str(nid), {})
    ctype = data.get("node_type") or node.get("class_type", "?")
    title = wf.title_of(node)
    where = f"node {nid} ({ctype}{': ' + title if title and title != ctype else ''})" if nid else "the server"
    kind = data.get("exception_type", "")
    message = data.get("exception_message", "").strip() or "unknown error"
    return f"Execution failed in {where}: {kind + ': ' if kind else ''}{message}"


def output_items(entry, previews=False):
    """(node_id, item) for every file the output nodes reported; temp previews only with previews=True."""
    found = []
    for nid, outputs in (entry.get("outputs") or {}).items():
        for key, items in outputs.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item:
                    if item.get("type", "output") == "temp" and not previews:
                        continue
                    found.append((nid, item))
    return found


def output_texts(entry):
    return [(nid, t) for nid, outputs in (entry.get("outputs") or {}).items()
            for t in outputs.get("text", []) if isinstance(t, str)]


def _node_label(api, nid):
    node = api.get(str(nid), {})
    ctype, title = node.get("class_type", "?"), wf.title_of(node)
    return f"node {nid} ({ctype}{': ' + title if title and title != ctype else ''})"


def check_set_names(api, assignments, object_info=None, workflow_inputs=None):
    """Refuse a --set input name its node does not have (ComfyUI would silently ignore it): checked against the
    server's node schema when there is one (a dynamic combo's "<combo>.<input>" keys included), else against
    the inputs the workflow's node had before the --set edits (`workflow_inputs`: {node id: [names]})."""
    for assignment, nid, name in assignments:
        node = api[nid]
        schema = (object_info or {}).get(node["class_type"])
        if schema is not None:
            known = [n for n, _, _ in wf.input_specs(schema, node["inputs"])]
            where = f"the server's {node['class_type']}"
        else:
            known = list((workflow_inputs or {}).get(nid, node["inputs"]))
            where = "the workflow's node"
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        added = wf.ADDED_INPUTS.get(node["class_type"], ())
        if schema is not None and name in added:
            hint = f" It was added in a newer ComfyUI; this server would ignore it.{hint}"
        elif schema is None and object_info is None:
            hint += " (Checked against the workflow only: the server could not be asked.)"
        raise wf.WorkflowError(f"--set {assignment!r}: {_node_label(api, nid)} has no input {name!r} "
                               f"({where} has: {', '.join(known) or 'none'}).{hint}")


def missing_files(api, object_info, client, uploaded=()):
    """Lines for every input file and model file the workflow names that the server does not have: an input
    file (LoadImage's image, Reference Clip Loader's video ...) neither in the server's list nor in its input
    folder nor being uploaded, a model file not in the server's list. A file input that a connected input
    supersedes (the clip loader's video when images / video_in are connected) is not read and not checked."""
    problems = []
    for nid in sorted(api, key=wf._id_key):
        node = api[nid]
        schema = object_info.get(node["class_type"])
        if schema is None:
            continue  # the server refuses an unknown node type itself, naming it
        for name, spec, _ in wf.input_specs(schema, node["inputs"]):
            value = node["inputs"].get(name)
            if not isinstance(value, str) or wf.spec_type(spec) != "COMBO":
                continue
            if any(wf.is_link(node["inputs"].get(o)) for o in SUPERSEDED_BY.get((node["class_type"], name), ())):
                continue
            options = wf.combo_values(spec)
            if value in options or value in uploaded:
                continue
            where = f"{_node_label(api, nid)} {name}"
            if any(wf.spec_options(spec).get(k) for k in UPLOAD_KEYS):
                if value and client.has_input_file(value):
                    continue
                problems.append(
                    f"  {where}: {value!r} is not on the server (never uploaded to its input folder, or removed); "
                    f"give the file with {'--video' if wf.is_target_video(node) else '--reference'} FILE "
                    f"(uploaded for you), upload it in ComfyUI, or "
                    f"--set {nid}.{name}=NAME with a file that is there")
            elif name in MODEL_INPUTS:
                row = MODEL_INPUTS[name]
                shown = ", ".join(repr(o) for o in options[:8]) + (" ..." if len(options) > 8 else "")
                problems.append(
                    f"  {where}: {row.noun} {value!r} is not installed on the server; put it in "
                    f"ComfyUI/models/{row.folder}/ ({row.what}) and restart ComfyUI (or refresh), or "
                    f"--set {nid}.{name}=NAME with one it has: {shown or 'none'}")
    return problems


def check_set_links(api, assignments, object_info=None):
    """Refuse a --set link ([NODE, OUTPUT]) to a node the workflow does not have, or to an output its node lacks
    (known from the server's schema when there is one)."""
    for assignment, nid, name, value in assignments:
        if not wf.is_link(value):
            continue
        src, slot = str(value[0]), value[1]
        if src not in api:
            raise wf.WorkflowError(
                f"--set {assignment!r}: links {_node_label(api, nid)} {name} to node {src!r}, which the workflow "
                f"does not have (its nodes: {', '.join(sorted(api, key=wf._id_key))}); give [\"ID\", OUTPUT] of "
                "one of them")
        schema = (object_info or {}).get(api[src]["class_type"])
        outputs = list(schema.get("output") or []) if schema is not None else None
        if slot < 0 or outputs is not None and slot >= len(outputs):
            shown = ", ".join(f"{i} {t}" for i, t in enumerate(outputs or [])) or "none"
            raise wf.WorkflowError(f"--set {assignment!r}: {_node_label(api, src)} has no output {slot} "
                                   f"(its outputs: {shown})")


def load_api(args, client, log):
    """(API workflow, the server's object_info or None): the file as given, a UI workflow converted with the
    server's node schemas."""
    try:
        data = wf.load_workflow(args.workflow)
    except OSError as e:
        why = "no such file" if isinstance(e, FileNotFoundError) else e.strerror or str(e)
        raise wf.WorkflowError(f"workflow {args.workflow!r}: {why}; give the path of a workflow JSON file, "
                               "e.g. example_workflows/api/standin_wan21_t2v_14b.json") from None
    if wf.is_ui_workflow(data):
        log(f"{args.workflow}: a UI workflow; converting it with the server's node schemas")
        object_info = client.object_info()
        return wf.ui_to_api(data, object_info), object_info
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return data, None
    raise wf.WorkflowError(f"{args.workflow}: neither an API workflow (Export (API)) nor a UI workflow")


def upload_input(client, path, flag, dry_run=False):
    """(name on the server, 'video' | 'image') for a file given on the command line (`flag`, e.g. --reference):
    its type and presence checked, then uploaded to the server's input folder (a dry run uploads nothing)."""
    path = Path(path)
    ext = path.suffix.lower()
    kind = "video" if ext in wf.VIDEO_EXTS else "image" if ext in wf.IMAGE_EXTS else None
    if kind is None:
        raise wf.WorkflowError(f"{flag} {path}: unknown file type {ext!r}; give a video "
                               f"({', '.join(sorted(wf.VIDEO_EXTS))}) or an image ({', '.join(sorted(wf.IMAGE_EXTS))})")
    if not path.is_file():
        raise wf.WorkflowError(f"{flag} {path}: no such file")
    return (path.name if dry_run else client.upload(path)), kind


def build_prompt(args, client, log):
    """The API prompt to queue: the workflow with the command's edits (reference, prompts, seed, --set), checked
    against the server (--set names and links, the files it names) unless a dry run finds no server."""
    api, object_info = load_api(args, client, log)
    uploaded = set()
    if args.reference:
        name, kind = upload_input(client, args.reference, "--reference", args.dry_run)
        uploaded.add(name)
        log(f"reference {name!r} -> node(s) {', '.join(wf.set_reference(api, name, kind))}")
    if args.video:
        name, kind = upload_input(client, args.video, "--video", args.dry_run)
        if kind != "video":
            raise wf.WorkflowError(f"--video {args.video}: an image; give the target video "
                                   f"({', '.join(sorted(wf.VIDEO_EXTS))}), and a photo with --reference")
        uploaded.add(name)
        log(f"video {name!r} -> node(s) {', '.join(wf.set_video(api, name))}")
    if args.prompt is not None:
        log(f"prompt -> node(s) {', '.join(wf.set_prompt(api, args.prompt, 'positive'))}")
    if args.negative is not None:
        log(f"negative prompt -> node(s) {', '.join(wf.set_prompt(api, args.negative, 'negative'))}")
    if args.seed is not None:
        wf.set_seed(api, args.seed)
    assignments, workflow_inputs = [], {nid: list(node["inputs"]) for nid, node in api.items()}
    for assignment in args.set or []:
        nid, name, value = wf.apply_set(api, assignment)
        assignments.append((assignment, nid, name, value))
    if object_info is None and assignments and args.dry_run:
        try:  # a dry run checks against the server when it answers, and against the workflow when not
            object_info = Client(client.url, timeout=5).object_info()
        except QueueError:
            pass
    elif object_info is None and not args.dry_run:
        object_info = client.object_info()
    check_set_names(api, [a[:3] for a in assignments], object_info, workflow_inputs)
    check_set_links(api, assignments, object_info)
    for _, nid, name, value in assignments:
        log(f"set node {nid} {name} = {value!r}")
    if not args.dry_run:
        problems = missing_files(api, object_info, client, uploaded)
        if problems:
            raise wf.WorkflowError("the workflow names files the server does not have (nothing was queued):\n"
                                   + "\n".join(problems))
    return api


def check_args(args):
    """Refuse, before anything is uploaded or queued, an argument that would only fail later."""
    if not math.isfinite(args.timeout) or args.timeout < 0:
        raise QueueError(f"--timeout {args.timeout:g}: give a number of seconds (0 = wait as long as it takes)",
                         code=EXIT_REFUSED)


def check_out_dir(out):
    """Refuse an --out that cannot become a folder before anything is queued (it is created only for files)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise wf.WorkflowError(f"--out {out}: a file, not a folder; give a folder for the downloads")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise wf.WorkflowError(f"--out {out}: cannot write in {parent}; give a folder you can write to")


def _cancelled(client, prompt_id, why):
    what = client.cancel(prompt_id)
    return f"{why}; prompt {prompt_id} cancelled on the server: {what}"


def run(args):
    client = Client(args.server)
    check_args(args)
    quiet = args.quiet

    def log(text):
        if not quiet:
            print(text, file=sys.stderr)

    check_out_dir(args.out)
    api = build_prompt(args, client, log)
    if args.dry_run:
        print(json.dumps(api, indent=2, ensure_ascii=False))
        return EXIT_OK
    client_id = uuid.uuid4().hex
    ws = open_ws(client, client_id)
    prompt_id = None
    try:
        status, response = client.post_json("/prompt", {"prompt": api, "client_id": client_id})
        if status != 200 or "prompt_id" not in response:
            print(format_node_errors(response, api), file=sys.stderr)
            return EXIT_REFUSED
        prompt_id = response["prompt_id"]
        if response.get("node_errors") and not args.allow_partial:
            # ComfyUI still runs the outputs that validated; a headless run wants all of them or none
            client.cancel(prompt_id)
            print(format_node_errors(dict(response, error={"message": "some outputs failed validation"}), api),
                  file=sys.stderr)
            print("(cancelled; --allow-partial runs the outputs that did validate)", file=sys.stderr)
            return EXIT_REFUSED
        if response.get("node_errors"):
            print(format_node_errors(dict(response, error={"message": "running only the outputs that validated"}),
                                     api), file=sys.stderr)
        log(f"queued prompt {prompt_id}")
        deadline = time.monotonic() + args.timeout if args.timeout else None
        outcome, error = (None, None)
        if ws is not None:
            outcome, error = wait_ws(ws, prompt_id, Progress(api, enabled=not quiet and not args.no_progress),
                                     deadline)
        entry = wait_history(client, prompt_id, deadline)
    except TimedOut:
        print(f"error: {_cancelled(client, prompt_id, f'--timeout {args.timeout:g} s passed')}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if prompt_id is None:
            print("interrupted (nothing was queued)", file=sys.stderr)
        else:
            print(f"interrupted: {_cancelled(client, prompt_id, 'Ctrl-C')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if ws is not None:
            ws.close()
    if outcome != "error" and entry.get("status", {}).get("status_str") == "error":
        errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
        outcome, error = "error", (errors[0] if errors else {"exception_message": json.dumps(entry["status"])})
    if outcome == "error":
        print(format_execution_error(error, api), file=sys.stderr)
        return EXIT_FAILED
    for nid, text in output_texts(entry):
        log(f"node {nid}: {text}")
    out_dir = Path(args.out)
    saved = []
    for nid, item in output_items(entry, previews=args.previews):
        dest = out_dir / item.get("subfolder", "") / item["filename"]
        try:
            path = client.download(item, dest, force=args.force)
        except OSError as e:
            raise QueueError(f"saving {dest} failed ({e.strerror or e}); the run finished: its files are in "
                             f"ComfyUI's output folder (prompt {prompt_id}); free some space or give another --out"
                             ) from None
        if path != dest:
            log(f"{dest} exists (an earlier run's); kept it and saved this run's as {path} (--force replaces)")
        saved.append(path)
    for path in saved:
        print(path)
    if not saved:
        log("the run finished but its output nodes saved no files")
    return EXIT_OK


def parser():
    ap = argparse.ArgumentParser(prog="python -m wanid queue", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow", help="workflow JSON (API format, e.g. example_workflows/api/*.json; "
                                     "UI workflows are converted)")
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI URL (default %(default)s)")
    ap.add_argument("--reference", help="reference clip (video) or photo to upload and use")
    ap.add_argument("--video", help="the video the workflow works on (face swap's target, VACE's pose video) to "
                                    "upload and set on its 'Target video' loader")
    ap.add_argument("--prompt", help="positive prompt text")
    ap.add_argument("--negative", help="negative prompt text (default: the workflow's)")
    ap.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                    help="set an input; NODE is an id or a title, VALUE is JSON when it parses (30, 4.5, true, "
                         "\"text\", [\"4\", 0] for a link), else text. Repeatable; applied last")
    ap.add_argument("--seed", type=int, help="seed for every seed / noise_seed input (default: the workflow's)")
    ap.add_argument("--out", default=".", help="folder for the downloaded outputs, keeping ComfyUI's subfolders "
                                               "(default: the current folder)")
    ap.add_argument("--force", action="store_true",
                    help="replace files of the same name in --out (default: keep them, save under a free name)")
    ap.add_argument("--previews", action="store_true", help="also download temporary previews")
    ap.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (default: wait)")
    ap.add_argument("--no-progress", action="store_true", help="no progress display")
    ap.add_argument("--quiet", action="store_true", help="print only the downloaded files and errors")
    ap.add_argument("--allow-partial", action="store_true",
                    help="when some outputs fail validation, run the others (default: cancel, exit 2)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the filled API workflow instead of queueing it (nothing is uploaded)")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return run(args)
    except wf.WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except QueueError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
