"""Atomic file writes: a kill at any moment leaves the old file or the new one.

Every writer goes to a temporary name in the target's folder, is fsync'ed,
then renamed over the target (``os.replace`` is atomic on POSIX and Windows),
and the folder is fsync'ed so the rename itself survives a power cut.
"""
import json
import os
import shutil

import torch


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename still holds
        pass


def _tmp_name(path):
    return f"{path}.tmp.{os.getpid()}"


def atomic_write(path, data, mode="wb"):
    """Write ``data`` (bytes or str, or a callable that writes into the open
    file) to ``path`` atomically."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode) as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_json(path, obj, indent=1):
    atomic_write(path, json.dumps(obj, indent=indent), mode="w")


def atomic_save(obj, path):
    """``torch.save`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def relink(src, dst):
    """Make ``dst`` name the file ``src`` names (a hard link, or a copy on file
    systems without them), atomically. Relinking to the file ``dst`` already
    names does nothing: ``rename`` of two links to one inode is a no-op that
    would leave the temporary link behind."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return
    tmp = _tmp_name(dst)
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    if os.path.lexists(tmp):  # defensive: same-inode rename left it
        os.remove(tmp)
