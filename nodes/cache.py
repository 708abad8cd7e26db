"""Loaded models that survive re-queues, bounded so switching files or providers does not pile them up (and their
memory) for the life of the server."""
import os


class LoadedCache:
    def __init__(self, size):
        self.size = size
        self.entries = {}  # key -> object, least recently used first

    def get(self, key, make):
        if key in self.entries:
            self.entries[key] = self.entries.pop(key)
        else:
            while len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = make()
        return self.entries[key]

    def __len__(self):
        return len(self.entries)


def file_stamp(folder, name):
    """For fingerprint_inputs: changes when the file `name` in model folder `folder` is replaced, so a re-queued
    prompt reloads it instead of answering from ComfyUI's node cache. Never raises."""
    try:
        import folder_paths
        path = folder_paths.get_full_path(folder, name)
        stat = os.stat(path)
        return f"{name}:{stat.st_mtime_ns}:{stat.st_size}"
    except Exception:  # noqa: BLE001 - execute reports a missing file
        return f"{name}:missing"


def file_key(path):
    """A key that changes when the file is replaced under the same name."""
    stat = os.stat(path)
    return (path, stat.st_mtime_ns, stat.st_size)
