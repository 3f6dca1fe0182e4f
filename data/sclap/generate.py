"""Spatial-temporal scene generator writing an stClotho-like dataset.

On disk (the manifest layout, data/sclap/manifest.py, which real data may use too):
    <root>/stclotho_manifest.csv          one row per audio file (MANIFEST_COLUMNS)
    <root>/<split>/<item_id>_<variant>.wav 4-channel FOA (ACN/SN3D), int16

An item is a triplet of real recordings with their own captions:
    pos   = event A from direction a, then event B from direction b
    neg_t = B then A, same directions (each event keeps its own direction)
    neg_s = A then B, each from another sector
All three share room, event instances, onsets and background noise, so they
differ only in order (neg_t) or direction (neg_s). Split "test" also holds
single-event clips (variant "single") for zero-shot direction classification.

Captions (cfg "captions", data.captions): "template" is the grammar below
(SPATIAL_TEMPLATES ..., the phrases in sounds.py; the only one before issue 13,
so a config without the key means it); "diverse" is data/sclap/captions.py,
which writes CAPTIONS_PER_ITEM captions a clip (caption, caption_2, ...). The
diverse words come from their own RNG stream: the scene RNG draws exactly what
it drew before, so the audio is the same under both.

Under "diverse" every triplet row also has its two events' single-event
spatial captions in that row's time order (EVENT_COLUMNS: event1_caption,
event2_caption, event1_caption_2, ...; the event slots' targets,
loss.event_weight), from a third stream (EVENT_CAPTION_SALT): the audio and
every other caption are what they were before the columns existed.
"""
import csv
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.io import wavfile

from data.sclap import captions as diverse
from data.sclap.sounds import CLASS_NAMES, SOUND_CLASSES, synth_event
from data.sclap.spatial import SECTOR_WORDS, Room, diffuse_noise, draw_direction
from data.workers import spawn_context
from training.io import atomic_write

MANIFEST = "stclotho_manifest.csv"
MANIFEST_COLUMNS = ["split", "item_id", "variant", "file_name", "caption", "plain_caption",
                    "event1_class", "event1_azimuth", "event1_elevation", "event1_onset",
                    "event2_class", "event2_azimuth", "event2_elevation", "event2_onset"]
SPATIAL_TEMPLATES = ["{a} from the {da}, then {b} from the {db}.",
                     "First {a} from the {da}, followed by {b} from the {db}.",
                     "{a} to the {da}, and then {b} to the {db}."]
PLAIN_TEMPLATES = ["{a}, then {b}.", "First {a}, followed by {b}.", "{a}, and then {b}."]
SINGLE_TEMPLATE = "{a} from the {da}."
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
CAPTION_GRAMMARS = ("template", "diverse")
CAPTION_SALT = 13   # the diverse grammar's stream: [gen_seed, split, index, CAPTION_SALT]
EXTRA_COLUMNS = [f"{c}_{k}" for k in range(2, diverse.CAPTIONS_PER_ITEM + 1)
                 for c in ("caption", "plain_caption")]
EVENT_CAPTION_SALT = 14   # the event captions' stream: [gen_seed, split, index, EVENT_CAPTION_SALT]
EVENT_COLUMNS = [f"event{e}_caption" + (f"_{k}" if k > 1 else "")
                 for k in range(1, diverse.CAPTIONS_PER_ITEM + 1) for e in (1, 2)]


def caption_grammar(cfg):
    """cfg's caption grammar; a config from before issue 13 has none: template."""
    g = cfg["captions"] if "captions" in cfg else "template"
    if g not in CAPTION_GRAMMARS:
        raise ValueError(f"data.captions must be one of {', '.join(CAPTION_GRAMMARS)}, got {g!r}")
    return g


def _caption_fields(caps, plains):
    """caption, plain_caption, caption_2, plain_caption_2, ... of one row."""
    out = {"caption": caps[0], "plain_caption": plains[0]}
    for k in range(1, len(caps)):
        out[f"caption_{k + 1}"], out[f"plain_caption_{k + 1}"] = caps[k], plains[k]
    return out


def _event_fields(first, second):
    """event1_caption, event2_caption, event1_caption_2, ... of one row."""
    out = {}
    for k, (a, b) in enumerate(zip(first, second)):
        tail = f"_{k + 1}" if k else ""
        out[f"event1_caption{tail}"], out[f"event2_caption{tail}"] = a, b
    return out


def _cap(s):
    return s[0].upper() + s[1:]


def spatial_caption(t, pa, da, pb, db):
    return _cap(SPATIAL_TEMPLATES[t].format(a=pa, da=SECTOR_WORDS[da], b=pb, db=SECTOR_WORDS[db]))


def plain_caption(t, pa, pb):
    return _cap(PLAIN_TEMPLATES[t].format(a=pa, b=pb))


def _write_wav(path, foa, sr):
    """FOA [4, n] float -> int16 WAV [n, 4]."""
    pcm = np.clip(np.round(foa.T * 32767), -32768, 32767).astype(np.int16)
    wavfile.write(path, sr, pcm)


def _mix(parts, n, noise, snr_db):
    """Sum (signal [4, m], start) parts into [4, n] and add noise at snr_db (W channel)."""
    out = np.zeros((4, n))
    for x, start in parts:
        m = min(n - start, x.shape[1])
        out[:, start:start + m] += x[:, :m]
    p_sig = np.mean(out[0] ** 2)
    return out + noise * np.sqrt(p_sig / 10 ** (snr_db / 10))


def make_item(split, index, cfg):
    """Render one triplet (or, for index >= num items, a single-event clip); return manifest rows."""
    sr, clip_s = cfg["sample_rate"], cfg["clip_seconds"]
    n, slot = int(sr * clip_s), int(sr * clip_s / 2)
    rng = np.random.default_rng([cfg["gen_seed"], SPLIT_IDS[split], index])
    room = Room(rng, sr, max_order=cfg["max_order"])
    noise = diffuse_noise(rng, n, sr)
    snr = rng.uniform(*cfg["snr_db"])
    out_dir = os.path.join(cfg["dir"], split)
    single = split == "test" and index >= cfg["num_test"]
    item_id = f"{split}_{index:05d}"
    grammar = caption_grammar(cfg)
    cap_rng = np.random.default_rng([cfg["gen_seed"], SPLIT_IDS[split], index, CAPTION_SALT])

    if single:
        c = rng.integers(len(CLASS_NAMES))
        name = CLASS_NAMES[c]
        sec = int(rng.integers(8))
        azi, ele = draw_direction(rng, sec, cfg["max_elevation"])
        dur = rng.uniform(1.5, clip_s - 0.5)
        s = synth_event(name, rng, sr, dur)
        onset = rng.uniform(0, clip_s - dur - 0.2)
        x = room.render(s, azi, ele, rng.uniform(1.0, 1.8))
        foa = _mix([(x, int(onset * sr))], n, noise, snr)
        phrase = SOUND_CLASSES[name][1][rng.integers(3)]
        fname = f"{split}/{item_id}_single.wav"
        _write_wav(os.path.join(cfg["dir"], fname), foa * (0.9 / np.abs(foa).max()), sr)
        if grammar == "diverse":
            text = dict(zip(("caption", "plain_caption"), diverse.single_caption(cap_rng, name, sec)))
        else:
            text = dict(caption=_cap(SINGLE_TEMPLATE.format(a=phrase, da=SECTOR_WORDS[sec])),
                        plain_caption=_cap(phrase) + ".")
        return [dict(split=split, item_id=item_id, variant="single", file_name=fname, **text,
                     event1_class=name, event1_azimuth=f"{azi:.2f}",
                     event1_elevation=f"{ele:.2f}", event1_onset=f"{onset:.3f}", event2_class="",
                     event2_azimuth="", event2_elevation="", event2_onset="")]

    ca, cb = rng.choice(len(CLASS_NAMES), size=2, replace=False)
    names = [CLASS_NAMES[ca], CLASS_NAMES[cb]]
    sa, sb = rng.choice(8, size=2, replace=False)            # pos sectors, distinct
    others_a = [s for s in range(8) if s != sa]
    sa2 = int(rng.choice(others_a))
    sb2 = int(rng.choice([s for s in range(8) if s not in (sb, sa2)]))
    sectors = {"pos": (sa, sb), "neg_s": (sa2, sb2)}
    dirs = {k: [draw_direction(rng, s, cfg["max_elevation"]) for s in v] for k, v in sectors.items()}
    dists = rng.uniform(1.0, 1.8, size=2)
    durs = rng.uniform(*cfg["event_seconds"], size=2)
    events = [synth_event(nm, rng, sr, d) for nm, d in zip(names, durs)]
    # each event keeps its offset inside whichever slot it plays in
    offsets = [rng.uniform(0, clip_s / 2 - d - 0.05) for d in durs]
    tmpl = int(rng.integers(len(SPATIAL_TEMPLATES)))
    phrases = [SOUND_CLASSES[nm][1][rng.integers(3)] for nm in names]
    rich = diverse.triplet_captions(cap_rng, names, sectors) if grammar == "diverse" else None
    if rich is not None:
        ev_rng = np.random.default_rng([cfg["gen_seed"], SPLIT_IDS[split], index, EVENT_CAPTION_SALT])
        event_caps = diverse.event_captions(ev_rng, names, sectors)

    renders = {k: [room.render(events[e], *dirs[k][e], dists[e]) for e in range(2)] for k in dirs}
    # variant -> (order of events, direction set)
    variants = {"pos": ((0, 1), "pos"), "neg_t": ((1, 0), "pos"), "neg_s": ((0, 1), "neg_s")}
    mixes, rows = {}, []
    for v, (order, dset) in variants.items():
        parts = [(renders[dset][e], k * slot + int(offsets[e] * sr)) for k, e in enumerate(order)]
        mixes[v] = _mix(parts, n, noise, snr)
        e1, e2 = order
        (a1, l1), (a2, l2) = dirs[dset][e1], dirs[dset][e2]
        s1, s2 = sectors[dset][e1], sectors[dset][e2]
        fname = f"{split}/{item_id}_{v}.wav"
        if rich is not None:
            text = {**_caption_fields(*rich[v]), **_event_fields(*event_caps[v])}
        else:
            text = dict(caption=spatial_caption(tmpl, phrases[e1], s1, phrases[e2], s2),
                        plain_caption=plain_caption(tmpl, phrases[e1], phrases[e2]))
        rows.append(dict(split=split, item_id=item_id, variant=v, file_name=fname, **text,
                         event1_class=names[e1], event1_azimuth=f"{a1:.2f}", event1_elevation=f"{l1:.2f}",
                         event1_onset=f"{offsets[e1]:.3f}",
                         event2_class=names[e2], event2_azimuth=f"{a2:.2f}", event2_elevation=f"{l2:.2f}",
                         event2_onset=f"{clip_s / 2 + offsets[e2]:.3f}"))
    scale = 0.9 / max(np.abs(m).max() for m in mixes.values())  # one gain: no loudness cue
    for v, row in zip(mixes, rows):
        _write_wav(os.path.join(cfg["dir"], row["file_name"]), mixes[v] * scale, sr)
    return rows


def _job(args):
    return make_item(*args)


def generate(cfg, workers=1):
    """Write the whole dataset under cfg['dir']; the manifest is written last, so
    its presence marks a complete dataset."""
    if cfg["event_seconds"][1] + 0.05 >= cfg["clip_seconds"] / 2 or cfg["clip_seconds"] <= 2.0:
        # each event plays inside its half of the clip; single clips last 1.5 s to clip - 0.5 s
        raise ValueError(f"data.event_seconds {cfg['event_seconds']} and data.clip_seconds "
                         f"{cfg['clip_seconds']}: the longest event must fit in half a clip "
                         f"(event_seconds[1] < clip_seconds / 2 - 0.05) and clip_seconds > 2")
    columns = MANIFEST_COLUMNS + (EXTRA_COLUMNS + EVENT_COLUMNS if caption_grammar(cfg) == "diverse" else [])
    jobs = []
    for split in ("train", "val", "test"):
        os.makedirs(os.path.join(cfg["dir"], split), exist_ok=True)
        count = cfg[f"num_{split}"] + (cfg["num_zeroshot"] if split == "test" else 0)
        jobs += [(split, i, cfg) for i in range(count)]
    if workers > 1:
        with spawn_context() as ctx, ProcessPoolExecutor(workers, mp_context=ctx) as ex:  # data/workers.py
            results = list(ex.map(_job, jobs, chunksize=16))
    else:
        results = [_job(j) for j in jobs]

    def write(f):
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        for rows in results:
            w.writerows(rows)
    atomic_write(os.path.join(cfg["dir"], MANIFEST), write, mode="w")
