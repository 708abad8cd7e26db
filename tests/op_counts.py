"""What a piece of model code runs, counted on any device: operators, host syncs and the memory its tensors hold.

    with OpCounts() as c:
        model_call()
    c.ops["aten.cat"], c.syncs, c.peak_bytes, c.allocations(min_bytes=...)

A TorchDispatchMode sees every ATen operator below autograd. A host sync is aten._local_scalar_dense (what
.item(), float(t), bool(t) and `if t:` become: on a GPU the host waits for the device there). Memory: every output
whose storage no input shares is a new allocation; live bytes drop when the last tensor on that storage is freed,
so `peak_bytes` is the most the counted code held at once beyond what existed before (an upper bound on what the
caching allocator needs for it; what an operator allocates and frees inside itself is not seen). Counts, never
times: tests assert them (tests/test_patch_costs.py), benchmarks print them.
"""
import collections
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

SYNC = "aten._local_scalar_dense"


def _key(t):
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


class OpCounts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.allocated = []  # (op, shape, dtype, bytes) of each new storage
        self.live_bytes = self.peak_bytes = 0
        self._live = {}  # storage key -> [bytes, tensors alive on it]
        self.copies_between_devices = 0

    @property
    def syncs(self):
        return self.ops[SYNC]

    def count(self, name):
        return sum(n for op, n in self.ops.items() if op == name or op.startswith(name + "."))

    def allocations(self, min_bytes=0, op=None):
        return [a for a in self.allocated if a[3] >= min_bytes and (op is None or a[0].startswith(op))]

    def _release(self, key):
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._live[key]

    def _track(self, name, t, inputs):
        if t.device.type == "meta" or not t.untyped_storage().nbytes():
            return
        key = _key(t)
        if key in inputs:
            if key in self._live:  # one more tensor on a storage this code allocated (a view)
                self._live[key][1] += 1
                weakref.finalize(t, self._release, key)
            return
        nbytes = t.untyped_storage().nbytes()
        entry = self._live.get(key)
        if entry is None:  # a new storage (a freed address reused counts anew)
            self._live[key] = [nbytes, 0]
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            self.allocated.append((name, tuple(t.shape), t.dtype, nbytes))
        self._live[key][1] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)  # e.g. "aten.cat"
        self.ops[name] += 1
        flat_in = [a for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
        out = func(*args, **(kwargs or {}))
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        devices = {a.device for a in flat_in}
        if name in ("aten._to_copy", "aten.copy_") and len(devices | {o.device for o in outs}) > 1:
            self.copies_between_devices += 1
        inputs = {_key(a) for a in flat_in if a.device.type != "meta"}
        for o in outs:
            self._track(name, o, inputs)
        return out
