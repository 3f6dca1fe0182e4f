"""One rule for generated data, for every family: a user's folder is never touched.

``ensure_generated(root, params, build, what)`` makes ``root`` hold the data
``build`` writes for exactly ``params``:

- ``root`` resolves against the current directory (``resolve_root``).
- The marker ``root/.structclip-generated.json`` records *every* generator
  parameter; the data are reused only when the marker's params equal these.
- A generator writes only into a folder it created (marker present) or an
  empty one. A folder holding anything else is somebody's data: the run stops
  with ``UserDataError`` naming the folder and ``--data.generate false``.
- Two processes never build at once (``flock`` on ``root/.structclip.lock``);
  the second waits, then finds the marker.
- ``build(tmp)`` writes into ``root/.building-<pid>/``; its entries are then
  renamed into ``root`` and the marker is written last, so a kill leaves
  either the old data or a folder without a marker that the next run rebuilds
  (it is ours: the lock file, written first into an empty folder, says so).
"""
import fcntl
import hashlib
import json
import os
import shutil
import threading

from training.io import atomic_json

MARKER = ".structclip-generated.json"
LOCK = ".structclip.lock"
BUILDING = ".building-"


class UserDataError(ValueError):
    """A folder that holds data this project did not write, or data that is
    not in the format it expects."""


def resolve_root(path):
    """An absolute path; relative paths resolve against the current directory."""
    return os.path.abspath(os.path.expanduser(str(path)))


def _normalise(params):
    # json round trip: tuples become lists, so a cached marker compares equal
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def read_marker(root):
    path = os.path.join(root, MARKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def ensure_generated(root, params, build, what="data"):
    """Return the absolute ``root`` holding ``build``'s data for ``params``."""
    root = resolve_root(root)
    params = _normalise(params)
    marker = read_marker(root) if os.path.isdir(root) else None
    if marker is not None and marker.get("params") == params:
        return root
    if os.path.isdir(root):
        entries = os.listdir(root)
        # our lock file is the first thing we write into a folder we take: with it
        # and no marker, this is a build of ours that was killed (or is running)
        if marker is None and entries and LOCK not in entries:
            raise UserDataError(
                f"{root}: holds files this project did not generate ({', '.join(sorted(entries)[:5])}"
                f"{', ...' if len(entries) > 5 else ''}); refusing to write {what} there. To train "
                f"on the data in this folder pass --data.generate false; to generate, point "
                f"--data.root at an empty or new folder")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, LOCK), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            marker = read_marker(root)
            if marker is not None and marker.get("params") == params:
                return root  # another process built it while we waited
            _clear(root)
            tmp = os.path.join(root, f"{BUILDING}{os.getpid()}-{threading.get_ident()}")
            os.makedirs(tmp)
            build(tmp)
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), os.path.join(root, name))
            os.rmdir(tmp)
            atomic_json(os.path.join(root, MARKER), {"what": what, "params": params})
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root


def _clear(root):
    """Empty a folder that is ours (our marker or our lock in it), keeping the lock."""
    for name in os.listdir(root):
        if name == LOCK:
            continue
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def check_user_folder(root, what="data"):
    """``root`` for ``--data.generate false``: it must exist; returns it absolute."""
    root = resolve_root(root)
    if not os.path.isdir(root):
        raise UserDataError(f"{root}: no such folder ({what} with --data.generate false must "
                            f"already be there)")
    return root


def derived_dir(root, family, generated, cache_dir=None):
    """Where files derived from the data (text or front-end features, baselines)
    are cached: inside generated data (our folder); for a user's folder, which
    is never written into, under ``cache_dir`` (default ``data_cache/``, against
    the current directory) in ``<family>/derived/<hash of the folder's path>``."""
    root = resolve_root(root)
    if generated:
        return root
    base = resolve_root(cache_dir or "data_cache")
    return os.path.join(base, family, "derived", hashlib.md5(root.encode()).hexdigest()[:10])
