"""Progress of a queued prompt on the terminal: one line per node that runs, a bar for the nodes that report steps
(tqdm when installed), plain lines at 25 % steps in logs. Standard library only."""
import sys

from . import workflow as wf


class Progress:
    """One line per node that reports steps: a bar on a terminal (tqdm when installed), plain lines in logs."""

    def __init__(self, api, stream=sys.stderr, enabled=True):
        self.api, self.stream, self.enabled = api, stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.total = len(api)
        self.done = set()
        self.node = None
        self.bucket = -1
        self.bar = None

    def _label(self, nid):
        node = self.api.get(str(nid), {})
        title = wf.title_of(node) or node.get("class_type", "?")
        return f"#{nid} {title}"

    def _close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.tty and self.node is not None:
            self.stream.write("\n")

    def cached(self, nodes):
        self.done.update(str(n) for n in nodes)
        if self.enabled and nodes:
            self.stream.write(f"cached: {len(nodes)} node(s)\n")

    def executing(self, nid):
        if self.node is not None:
            self.done.add(self.node)
        if not self.enabled:
            self.node = nid
            return
        self._close_bar()
        self.node, self.bucket = nid, -1
        if nid is not None:
            self.stream.write(f"[{len(self.done) + 1}/{self.total}] {self._label(nid)}\n")
            self.stream.flush()

    def step(self, nid, value, maximum):
        if not self.enabled or not maximum:
            return
        if self.tty:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                if self.bar is None or self.bar.total != maximum:
                    self._close_bar()
                    self.bar = tqdm(total=maximum, desc=self._label(nid), file=self.stream, leave=True)
                self.bar.n = value
                self.bar.refresh()
                return
            width = 30
            filled = int(width * value / maximum)
            self.stream.write(f"\r  [{'#' * filled}{'-' * (width - filled)}] {value}/{maximum}")
            self.stream.flush()
            return
        bucket = int(4 * value / maximum)  # logs: a line at 25 %, 50 %, 75 %, 100 %
        if bucket != self.bucket:
            self.bucket = bucket
            self.stream.write(f"  {self._label(nid)}: {value}/{maximum}\n")
            self.stream.flush()

    def close(self):
        if self.enabled:
            self._close_bar()
            self.node = None
