"""FROZEN held-out phrasing of sCLAP captions (issue 13). Do not edit: changing
anything here changes every heldout_ number in experiments.md.

A second caption grammar that training never sees: its own sentence frames
and connectors, its own wording of every sound class and every direction
(none of them produced by the training grammars, data/sclap/captions.py
`diverse` or generate.py's `template`; tests/test_sclap_heldout.py checks this
over their whole inventories). Evaluation (families/sclap/evaluation.py) writes
these captions from a split's structured labels, the manifest's event classes,
azimuths and order (event1 plays first), so every checkpoint, also one trained
before this grammar existed, is measured on the same captions. The choices of
an item come from an RNG seeded with its item id and SALT only.

Frames use the slot letters of captions.py: {A} / {B} finite clauses, {a} /
{b} noun phrases, the letter being the TIME order (A first) whatever the
surface order ("prior to {b}, one hears {a}" names the later event first). A
frame's two slots have one form, so neg_t's caption holds pos's two phrases,
swapped, and nothing else.
"""
import hashlib

import numpy as np

from data.sclap.captions import SLOT
from data.sclap.spatial import sector_of

SALT = 20261201

SOUNDS = {
    "dog": dict(clauses=["a hound bays", "a pooch yelps", "a canine woofs"],
                nominals=["the baying of a hound", "a yelping pooch"]),
    "bell": dict(clauses=["a gong resonates", "a carillon peals", "a handbell jingles"],
                 nominals=["the peal of a carillon", "a resonating gong"]),
    "siren": dict(clauses=["a fire truck's klaxon howls", "a warning klaxon shrieks",
                           "a patrol car's horn shrieks"],
                  nominals=["the howl of a klaxon", "a shrieking klaxon"]),
    "engine": dict(clauses=["a generator drones", "a lorry's diesel throbs", "machinery whirs"],
                   nominals=["the drone of a generator", "whirring machinery"]),
    "rain": dict(clauses=["a drizzle sprinkles", "a downpour splatters", "a shower of droplets splashes"],
                 nominals=["a steady downpour", "the splatter of a shower"]),
    "footsteps": dict(clauses=["a pedestrian strides", "heels tread across the floor", "a hiker plods along"],
                      nominals=["the tread of a pedestrian", "striding heels"]),
    "bird": dict(clauses=["a sparrow twitters", "a finch warbles", "a robin cheeps"],
                 nominals=["the twittering of a sparrow", "a warbling finch"]),
    "clap": dict(clauses=["an audience applauds", "palms smack together", "a spectator applauds"],
                 nominals=["applause", "the smacking of palms"]),
    "knock": dict(clauses=["a visitor raps at the entrance", "knuckles tap on timber",
                           "a fist bangs against a panel"],
                  nominals=["a rap at the entrance", "the tapping of knuckles"]),
    "whistle": dict(clauses=["a piper toots a high note", "a tin flute squeals", "a pipe shrills"],
                    nominals=["the tooting of a pipe", "a squealing tin flute"]),
    "phone": dict(clauses=["a handset jangles", "a landline purrs", "a smartphone beeps repeatedly"],
                  nominals=["the jangle of a handset", "a purring landline"]),
    "drum": dict(clauses=["a tom-tom thuds", "a percussionist pounds a bongo", "a timpani resounds"],
                 nominals=["the thud of a tom-tom", "pounding percussion"]),
}

# sector index (0 front, counter-clockwise, data/sclap/spatial.py) -> phrases
DIRECTIONS = [
    ["dead ahead", "facing the listener", "directly in front of the listener"],
    ["diagonally forward to the left", "at the listener's front-left", "leftward and forward"],
    ["at the listener's left", "on the left-hand side", "leftward"],
    ["diagonally behind to the left", "at the listener's back-left", "leftward and to the rear"],
    ["at the listener's back", "to the rear of the listener", "directly behind the listener"],
    ["diagonally behind to the right", "at the listener's back-right", "rightward and to the rear"],
    ["at the listener's right", "on the right-hand side", "rightward"],
    ["diagonally forward to the right", "at the listener's front-right", "rightward and forward"],
]

FRAMES = [
    "{A}; subsequently {B}",
    "prior to {b}, one hears {a}",
    "{a} precedes {b}",
    "{b} arrives in the wake of {a}",
    "once {a} has died down, {b} begins",
    "to begin with {A}; to finish, {B}",
    "{a}, succeeded by {b}",
    "{b} occurs subsequent to {a}",
    "{A}, whereupon {B}",
    "the opening sound is {a} and the closing one is {b}",
    "{a}, eventually giving way to {b}",
    "{b} sets in once {a} is over",
]

# zero-shot direction: one prompt a sector (its first wording)
ZEROSHOT_FRAME = "a noise is audible {dir}"


def zeroshot_prompts():
    """The 8 held-out direction prompts, in sector order."""
    return [_cap(ZEROSHOT_FRAME.format(dir=d[0])) for d in DIRECTIONS]


def _cap(s):
    return s[0].upper() + s[1:] + "."


def item_rng(item_id):
    """The RNG of one item: its id and SALT, nothing else."""
    return np.random.default_rng([SALT, int(hashlib.md5(item_id.encode()).hexdigest()[:12], 16)])


def describes(row):
    """True when a row holds what this grammar needs: two known event classes."""
    return all(row.get(f"event{e}_class") in SOUNDS for e in (1, 2))


def render(frame, events, sectors):
    """Fill a frame; events: two (class, (clause idx, nominal idx, style idx)) in
    time order, sectors: theirs."""
    fill = {}
    for (name, (c, n, st)), sec, (big, small) in zip(events, sectors, (("A", "a"), ("B", "b"))):
        where = DIRECTIONS[sec][st]
        fill[big] = f"{SOUNDS[name]['clauses'][c]} {where}"
        fill[small] = f"{SOUNDS[name]['nominals'][n]} {where}"
    return _cap(SLOT.sub(lambda m: fill[m.group(1)], frame))


def item_captions(item_id, rows):
    """{variant: held-out caption} of one item; rows {variant: manifest row}
    with event{1,2}_class and event{1,2}_azimuth (event1 plays first). The
    frame and each class's wording are shared by the variants, so they differ
    only in what their clips differ in: order (neg_t) or directions (neg_s)."""
    rng = item_rng(item_id)
    frame = FRAMES[rng.integers(len(FRAMES))]
    words = {}
    for name in (rows["pos"]["event1_class"], rows["pos"]["event2_class"]):
        s = SOUNDS[name]
        words[name] = (int(rng.integers(len(s["clauses"]))), int(rng.integers(len(s["nominals"]))),
                       int(rng.integers(len(DIRECTIONS[0]))))
    out = {}
    for v, r in rows.items():
        names = [r["event1_class"], r["event2_class"]]
        sectors = [sector_of(float(r["event1_azimuth"])), sector_of(float(r["event2_azimuth"]))]
        out[v] = render(frame, [(nm, words[nm]) for nm in names], sectors)
    return out
