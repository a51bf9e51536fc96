"""A small recycling pool for numpy arrays that an autograd node keeps until its backward.

Why: Sinkhorn's iterates (`Ops.iterates`, [2 * iters - 1, n, n, T]) are a few hundred KB
per layer at the depth sweep's size. glibc serves an allocation that large with fresh pages
from the OS (mmap, or a heap top it trimmed when the previous step freed its buffers), and
the first write to each 4 KB page faults; on the quick sweep that cost more than a third of
the Sinkhorn forward itself. A buffer from this pool was written before, so its pages are
already mapped.

When a buffer may be handed out again: only when nothing outside the pool refers to it,
which its reference count says exactly (a view's `.base`, a `torch.from_numpy` tensor, a
saved tensor of an autograd graph all hold a reference). A buffer still in use is never
handed out; one that is free again is. The count a free buffer shows is measured once, the
same way the scan reads it, so it does not depend on the interpreter's bookkeeping.
"""
from __future__ import annotations

import math
import sys
import threading

_getrefcount = getattr(sys, "getrefcount", None)  # CPython; elsewhere the pool only allocates


def _count_in_list(items: list, i: int) -> int:
    """The reference count of items[i] as the scan sees it."""
    return _getrefcount(items[i])


# What a buffer referred to by nothing but its pool list shows inside the scan.
_FREE_COUNT = _count_in_list([object()], 0) if _getrefcount is not None else -1


class BufferPool:
    """Uninitialised numpy arrays, recycled once only the pool refers to them.

    `empty(shape, dtype)` returns a free pooled buffer of that shape and dtype, or a new
    one (kept for reuse while the pool holds at most `max_bytes` and the buffer is at most
    `max_buffer_bytes`; larger or surplus buffers are plain allocations). Thread-safe.
    """

    def __init__(self, max_bytes: int, max_buffer_bytes: int):
        import numpy

        self.max_bytes, self.max_buffer_bytes = int(max_bytes), int(max_buffer_bytes)
        self._empty = numpy.empty
        self._dtype = numpy.dtype
        self._buffers: dict[tuple, list] = {}  # (shape, dtype) -> buffers
        self._cursor: dict[tuple, int] = {}  # where the next scan starts (after the last hit)
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def pooled_bytes(self) -> int:
        """Bytes held for reuse."""
        return self._bytes

    def empty(self, shape: tuple, dtype):
        """An uninitialised array [*shape] of `dtype` that nothing else refers to."""
        shape, dtype = tuple(shape), self._dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if _FREE_COUNT < 0 or nbytes > self.max_buffer_bytes:
            return self._empty(shape, dtype)
        key = (shape, dtype)
        with self._lock:
            buffers = self._buffers.setdefault(key, [])
            count, start = len(buffers), self._cursor.get(key, 0)
            for step in range(count):
                i = (start + step) % count
                if _count_in_list(buffers, i) <= _FREE_COUNT:
                    self._cursor[key] = i + 1
                    return buffers[i]
            buf = self._empty(shape, dtype)
            if self._bytes + nbytes <= self.max_bytes:
                buffers.append(buf)
                self._bytes += nbytes
                self._cursor[key] = len(buffers)
            return buf

    def clear(self) -> None:
        """Forget every pooled buffer (those still in use stay valid for their holders)."""
        with self._lock:
            self._buffers.clear()
            self._cursor.clear()
            self._bytes = 0
