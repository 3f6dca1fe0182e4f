"""T-SALM's stClotho layout (Cell778/T-SALM: src/utils/datasets.py class
stClotho, src/data/data.py; BRIEF sec. 3). No manifest:

    temporal_spatial_audio_text/
      Clotho/audio/{train,valid,test}/temporal_XXXXXX.flac           positives
      Clotho/metadata/{split}/temporal_XXXXXX.json
      stClotho_negative/audio/{split}/temporal/temporal_negative_XXXXXX.flac
      stClotho_negative/audio/{split}/spatial/spatial_negative_XXXXXX.flac
      stClotho_negative/metadata/{split}/{temporal,spatial}/..._negative_XXXXXX.json

data.root may be that folder or the one holding it. The positive and its two
negatives are matched by the trailing digits of their names (one rule for all
three: the anchor's bug was negatives paired by another index rule). Audio may
be FLAC or WAV. Each JSON holds ``temporal_spatial_caption`` [5] (the
spatial-temporal captions of the whole clip) and ``audio_segments`` [2], each
with ``metadata`` {``caption`` [5], ``azi``, ``ele``, ``ori_audio_duration``}.
Plain captions (for L_sem) are T-SALM's: "<caption i of segment 0>, then
<caption i of segment 1>." The event slots' targets (loss.event_weight) are
each segment's ``metadata.spatialized_caption`` [5], segment 0 first (the
segments are in time order in every clip's own JSON, negatives included).
Our split "val" is their ``valid``.
"""
import json
import os
import re

from data.cache import UserDataError

ROOT_DIR = "temporal_spatial_audio_text"
POS_DIR, NEG_DIR = "Clotho", "stClotho_negative"
SPLIT_DIRS = {"train": "train", "val": "valid", "test": "test"}
AUDIO_EXT = (".flac", ".wav")
NEG_PREFIX = {"neg_t": "temporal_negative_", "neg_s": "spatial_negative_"}
DESCRIPTION = (f"T-SALM's stClotho: [{ROOT_DIR}/]{POS_DIR}/{{audio,metadata}}/{{train,valid,test}}/"
               f"temporal_XXXXXX.{{flac,json}} and {NEG_DIR}/{{audio,metadata}}/{{split}}/"
               f"{{temporal,spatial}}/{{temporal,spatial}}_negative_XXXXXX.{{flac,json}}")


class STClothoError(UserDataError):
    """A file of the stClotho layout that does not hold what T-SALM writes."""


def find_base(root):
    """The folder holding Clotho/ and stClotho_negative/, or None."""
    for base in (os.path.join(root, ROOT_DIR), root):
        if os.path.isdir(os.path.join(base, POS_DIR, "metadata")) and \
                os.path.isdir(os.path.join(base, NEG_DIR)):
            return base
    return None


def probe(root):
    return find_base(root) is not None


def _digits(stem):
    m = re.search(r"(\d+)$", stem)
    return m.group(1) if m else None


def _index(folder, exts, prefix=None):
    """{trailing digits: path} of the files under folder (recursively) with these
    extensions (and stem prefix)."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            key = _digits(stem)
            if ext.lower() not in exts or key is None or (prefix and not stem.startswith(prefix)):
                continue
            path = os.path.join(d, f)
            if key in out:
                raise STClothoError(f"{out[key]} and {path}: two files with the number {key}; "
                                    f"a triplet is matched by its trailing digits")
            out[key] = path
    return out


def _angle(v, path, field):
    """A number, a numeric string, or a one-element list of either (T-SALM's _to_angle)."""
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    try:
        return float(v)
    except (TypeError, ValueError):
        raise STClothoError(f"{path}: field {field!r} must be an angle in degrees, got {v!r}") from None


def _captions(v, path, field):
    if not isinstance(v, list) or not v or not all(isinstance(c, str) and c.strip() for c in v):
        raise STClothoError(f"{path}: field {field!r} must be a non-empty list of captions, got "
                            f"{str(v)[:80]!r}")
    return [c.strip() for c in v]


def read_metadata(path, root):
    """One clip's JSON -> a row (data/sclap/layouts.py's form); file_name set by the caller."""
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise STClothoError(f"{path}: not valid JSON ({e})") from None
    spatial = _captions(meta.get("temporal_spatial_caption"), path, "temporal_spatial_caption")
    segs = meta.get("audio_segments")
    if not isinstance(segs, list) or len(segs) != 2:
        raise STClothoError(f"{path}: field 'audio_segments' must list the clip's 2 segments, got "
                            f"{len(segs) if isinstance(segs, list) else type(segs).__name__}")
    row = {"caption": spatial[0], "captions": spatial, "source": os.path.relpath(path, root)}
    plain, events, missing = [], [], None
    for e, seg in enumerate(segs):
        m = seg.get("metadata") if isinstance(seg, dict) else None
        where = f"audio_segments[{e}].metadata"
        if not isinstance(m, dict):
            raise STClothoError(f"{path}: field {where!r} missing")
        plain.append(_captions(m.get("caption"), path, f"{where}.caption"))
        try:   # needed only by the event slots: the dataset names what is missing if asked for
            events.append(_captions(m.get("spatialized_caption"), path, f"{where}.spatialized_caption"))
        except STClothoError as err:
            missing = missing or str(err)
        row[f"event{e + 1}_azimuth"] = _angle(m.get("azi"), path, f"{where}.azi")
        row[f"event{e + 1}_elevation"] = _angle(m.get("ele"), path, f"{where}.ele")
        row[f"event{e + 1}_class"] = ""                    # stClotho has no class labels
    # T-SALM's i-to-i pairing: caption i of one segment, then caption i of the other
    row["plain_captions"] = [f"{a.rstrip('.!?')}, then {b}" + ("" if b[-1] in ".!?" else ".")
                             for a, b in zip(plain[0], plain[1])]
    row["plain_caption"] = row["plain_captions"][0]
    row["event_captions"], row["event_captions_missing"] = (None, missing) if missing else (events, None)
    dur = segs[0]["metadata"].get("ori_audio_duration")
    row["join_s"] = float(dur) if isinstance(dur, (int, float)) and dur > 0 else None
    return row


def read_split(root, split, log=print):
    """(items [{variant: row}], []) of one split, matched by trailing digits; no
    single-event clips in this layout."""
    base = find_base(root)
    if base is None:
        raise STClothoError(f"{root}: not the stClotho layout ({DESCRIPTION})")
    sd = SPLIT_DIRS.get(split, split)
    folders = {"pos": (os.path.join(base, POS_DIR, "audio", sd), os.path.join(base, POS_DIR, "metadata", sd)),
               "neg": (os.path.join(base, NEG_DIR, "audio", sd), os.path.join(base, NEG_DIR, "metadata", sd))}
    for audio_dir, meta_dir in folders.values():
        for d in (audio_dir, meta_dir):
            if not os.path.isdir(d):
                raise STClothoError(f"{d}: folder of split {split!r} not found (T-SALM names the "
                                    f"splits train, valid, test)")
    found = {"pos": (_index(folders["pos"][0], AUDIO_EXT), _index(folders["pos"][1], (".json",)))}
    for v, prefix in NEG_PREFIX.items():
        found[v] = (_index(folders["neg"][0], AUDIO_EXT, prefix), _index(folders["neg"][1], (".json",), prefix))
    sets = [set(d) for pair in found.values() for d in pair]
    keys = sorted(set.intersection(*sets))
    unmatched = sorted(set.union(*sets) - set(keys))
    if not keys:
        raise STClothoError(f"{base}: no complete triplet in split {sd!r} (a positive, its temporal "
                            f"and spatial negative, audio and JSON each, sharing trailing digits)")
    if unmatched:
        log(f"sclap: warning: split {sd}: {len(unmatched)} number(s) lack a file of their triplet "
            f"(audio or JSON of the positive or a negative), left out: {', '.join(unmatched[:5])}"
            f"{', ...' if len(unmatched) > 5 else ''}")
    items = []
    for k in keys:
        item = {}
        for v, (audio, meta) in found.items():
            row = read_metadata(meta[k], root)
            row.update(file_name=os.path.relpath(audio[k], root), item_id=k, variant=v)
            item[v] = row
        items.append(item)
    return items, []
