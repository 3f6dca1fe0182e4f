"""A user's folder before and after a run: every entry, folders too, and each
file's SHA-256, so a changed byte, a deleted file or an added file or folder
all show."""
import hashlib
import os


def tree(root):
    """{relative path: sha256 of the file, or "dir"} of everything under ``root``."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root) + "/"] = "dir"
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.relpath(os.path.join(d, name), root)] = hashlib.sha256(f.read()).hexdigest()
    return out
