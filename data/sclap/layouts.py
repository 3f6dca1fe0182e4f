"""The on-disk layouts the sCLAP loader reads, found by looking (data/layout.py).

    manifest  the project's own: stclotho_manifest.csv + FOA files (data/sclap/manifest.py);
              what the generator writes
    stclotho  T-SALM's stClotho folders, no manifest (data/sclap/stclotho.py)

Every reader returns one split as (items, singles): items are
{variant: row} for variant in (pos, neg_t, neg_s); singles are one-event
rows (zero-shot direction; the manifest layout only). A row holds
file_name (relative to root), caption / captions (spatial, >= 1),
plain_caption / plain_captions, event{1,2}_azimuth / _elevation (degrees,
azimuth counter-clockwise from the front), join_s (seconds where the
second event starts, or None) and, for triplet rows, event_captions
([first event's captions], [second event's]) in the row's time order, or
None with event_captions_missing naming the file and the field.
"""
from data.layout import Layout, detect_layout, exists
from data.sclap import manifest, stclotho
from data.sclap.generate import MANIFEST

LAYOUTS = [
    Layout("manifest", exists(MANIFEST),
           f"{MANIFEST} (the project's layout: one row per FOA file, data/sclap/manifest.py)"),
    Layout("stclotho", stclotho.probe, stclotho.DESCRIPTION),
]
READERS = {"manifest": manifest.read_split, "stclotho": stclotho.read_split}


def detect(root, forced=None):
    """The Layout that root holds (``forced``: --data.format NAME)."""
    return detect_layout(root, LAYOUTS, forced, what="sCLAP data")


def read_split(root, layout, split):
    return READERS[layout](root, split)
