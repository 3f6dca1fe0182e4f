"""Which documented on-disk layout a user's data folder holds, found by looking.

A family lists its layouts in order as ``Layout(name, probe, description)``:
``probe(root)`` says whether ``root`` looks like it (cheap checks: a file or
folder by name), ``description`` says what it looks for. ``detect_layout``
returns the first that matches, or the one ``--data.format`` forces (checked
too), and otherwise raises an error that lists everything it looked for.
"""
import os
from dataclasses import dataclass
from typing import Callable

from data.cache import UserDataError


@dataclass(frozen=True)
class Layout:
    name: str
    probe: Callable[[str], bool]
    description: str


def exists(*parts):
    """A probe: ``root/<parts>`` exists (a ``*`` part matches any entry)."""
    def probe(root):
        paths = [root]
        for part in parts:
            if part == "*":
                paths = [os.path.join(p, e) for p in paths if os.path.isdir(p) for e in os.listdir(p)]
            else:
                paths = [os.path.join(p, part) for p in paths]
        return any(os.path.exists(p) for p in paths)
    return probe


def detect_layout(root, layouts, forced=None, what="data"):
    """The ``Layout`` that ``root`` holds (``forced``: that one's name, which must match)."""
    names = [lay.name for lay in layouts]
    if forced not in (None, "", "auto"):
        if forced not in names:
            raise UserDataError(f"--data.format {forced!r}: unknown {what} layout; "
                                f"known: {', '.join(names)}")
        lay = layouts[names.index(forced)]
        if not lay.probe(root):
            raise UserDataError(f"{root}: --data.format {forced} expects {lay.description}; "
                                f"not found")
        return lay
    for lay in layouts:
        if lay.probe(root):
            return lay
    listing = "\n".join(f"  {lay.name}: {lay.description}" for lay in layouts)
    found = ", ".join(sorted(os.listdir(root))[:8]) if os.path.isdir(root) else "no such folder"
    raise UserDataError(f"{root}: matches none of the {what} layouts this loader reads "
                        f"(found: {found}). Looked for:\n{listing}")
