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


def file_key(path):
    """A key that changes when the file is replaced under the same name."""
    stat = os.stat(path)
    return (path, stat.st_mtime_ns, stat.st_size)
