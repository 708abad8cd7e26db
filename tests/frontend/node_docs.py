"""Writes the node help pages js/docs/<node id>.md that ComfyUI's front-end shows for custom nodes (node library
"?" and the selection toolbox's help; fetched from /extensions/<pack>/docs/<node id>.md).

A page = the node's display name and description, hand-written notes (kept between the NOTES markers), then the
inputs and outputs with their tooltips, all from the V3 schema, so the help cannot drift from the node.
tests/test_frontend.py fails when a page is missing or out of date. Usage (ComfyUI needed, see wanid_testing):

    ~/.cache/wanid-test-venv-*/bin/python tests/frontend/node_docs.py        # rewrite the pages
    ~/.cache/wanid-test-venv-*/bin/python tests/frontend/node_docs.py --check
"""
import re
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
DOCS = REPO / "js" / "docs"
NOTES_BEGIN, NOTES_END = "<!-- NOTES (hand-written, kept) -->", "<!-- /NOTES -->"
GENERATED = "<!-- Below: generated from the node schema by tests/frontend/node_docs.py; do not edit. -->"


def _cell(text):
    return (text or "").replace("|", "\\|").replace("\n", " ").strip()


def _input_row(inp):
    kind = inp.get_io_type()
    extra = []
    default = getattr(inp, "default", None)
    if default is not None:
        extra.append(f"default `{default}`")
    options = getattr(inp, "options", None)
    # only fixed choices: file lists (no default) differ from one install to the next
    if options and kind == "COMBO" and default is not None and len(options) <= 8:
        extra.append("one of " + ", ".join(f"`{o}`" for o in options))
    if getattr(inp, "min", None) is not None and getattr(inp, "max", None) is not None:
        extra.append(f"{inp.min} to {inp.max}")
    if inp.optional:
        extra.append("optional")
    return f"| `{inp.id}` | {kind} | {_cell(inp.tooltip)} | {_cell('; '.join(extra))} |"


def _output_name(out, i):
    name = out.display_name or out.id
    return name if name and not re.fullmatch(r"_\d+_.*_", name) else f"output {i}"


def render(schema, notes=""):
    lines = [f"# {schema.display_name or schema.node_id}", "", f"`{schema.node_id}` · category {schema.category}",
             "", _cell(schema.description), "", NOTES_BEGIN, notes.strip("\n"), NOTES_END, "", GENERATED, "",
             "## Inputs", "", "| name | type | what | values |", "|---|---|---|---|"]
    lines += [_input_row(i) for i in schema.inputs]
    lines += ["", "## Outputs", "", "| name | type | what |", "|---|---|---|"]
    lines += [f"| `{_output_name(o, i)}` | {o.get_io_type()} | {_cell(o.tooltip)} |"
              for i, o in enumerate(schema.outputs)]
    if schema.is_output_node:
        lines += ["", "Output node: it runs even when nothing is connected to it."]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def notes_of(text):
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return ""


def pack_schemas():
    sys.path.insert(0, str(TESTS))
    import wanid_testing
    wanid_testing.import_comfy()
    from wanid_pack.nodes import all_nodes
    return [n.GET_SCHEMA() for n in all_nodes()]


def expected_pages(schemas=None):
    """{path: text} for every pack node, keeping the notes already written."""
    pages = {}
    for s in schemas or pack_schemas():
        path = DOCS / f"{s.node_id}.md"
        old = path.read_text() if path.exists() else ""
        pages[path] = render(s, notes_of(old))
    return pages


def main(argv):
    pages = expected_pages()
    stale = [p for p, text in pages.items() if not p.exists() or p.read_text() != text]
    if "--check" in argv:
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)}")
        return 1 if stale else 0
    DOCS.mkdir(parents=True, exist_ok=True)
    for p in stale:
        p.write_text(pages[p])
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
