"""Where a run writes its reports, checked before any work (the depth sweep's --out, the
benchmarks' result folders and files)."""
from __future__ import annotations

import os
import tempfile


def folder_problem(path) -> str | None:
    """Why `path` cannot be (or become) a writable folder, as the end of a sentence ("but
    '/x' is a file"), or None: a file stands there or where one of its parent folders
    should be, or the nearest existing folder cannot be written. Missing folders are fine
    (the scripts create them). Writing is tried with a temporary file, since os.access says
    yes to root on a read-only file system (/proc, a read-only mount)."""
    existing = os.path.abspath(os.fspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)  # the root always exists
    if not os.path.isdir(existing):
        return f"but {existing!r} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"but {existing!r} is not writable"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"but {existing!r} is not writable ({err.strerror})"
    return None
