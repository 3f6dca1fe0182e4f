"""The held-out caption grammar of radar evaluation: FROZEN.

Changing anything in this file (or how data/radar/caption_grammar.py
renders it) changes every heldout_ number in experiments.md; add a new
grammar beside it instead. tests/test_radar_heldout.py pins a few of its
captions word for word.

Captions a researcher might write for the same clips, in words the
training grammars (data/radar/captions.py ``diverse``, data/radar/text.py
``template``) never produce: their own sentence frames and connectors
("prior to", "having ...", "subsequently", "once done", "in the wake
of", "initially ... eventually"), verbs ("treads", "springs", "pivots",
"collapses"), direction words ("nearer to the antenna", "in the leftward
direction", "counterclockwise"), speeds, counts (digits: "3 times"),
limbs ("the arm on the left side") and subjects ("an adult", "the
actor"); no pronouns. tests/test_radar_heldout.py checks the separation
over both training inventories.

``heldout_captions(actions, clip_id)`` makes a clip's captions and their
order-swapped versions (time order permuted, also in "prior to X, Y" and
"Y, having X beforehand") from its meta ``actions`` at evaluation,
deterministically from the clip id, so every checkpoint -- those trained
before the held-out set existed too -- meets the same sentences.
``HELDOUT_ACTION_PROMPTS``: one zero-shot prompt per action.
"""
import zlib

import numpy as np

from data.radar.caption_grammar import Grammar, Subject, make
from data.radar.text import clean_caption

SALT = 130013          # the held-out stream: default_rng([SALT, crc32(clip id)])
NUM_CAPTIONS = 3
MAX_WORDS = 20

SUBJECTS = tuple(Subject(n, "they", "their", "themselves") for n in (
    "an adult", "the actor", "a performer", "a lady", "a gentleman", "the participant",
    "this individual", "a young adult", "an older gentleman"))

FRAMES = {
    1: ["we see {S} {0:ing}", "{S} can be seen {0:ing}", "in this clip {S} {0:s}"],
    2: ["{S} {0:s}, and subsequently {1:s}", "prior to {1:ing}, {S} {0:s}", "{S} {0:s} prior to {1:ing}",
        "{S} {1:s} once done {0:ing}", "having {0:en}, {S} {1:s}", "{S} {1:s}, having {0:en} beforehand",
        "{S} begins by {0:ing} and concludes by {1:ing}", "initially {S} {0:s}; eventually {1:s}",
        "{S} {0:s} ahead of {1:ing}", "ahead of {1:ing}, {S} {0:s}", "{S} {0:s}, with {1:ing} coming next",
        "{S} {0:s} and later on {1:s}", "{S} {1:s} in the wake of {0:ing}"],
    3: ["initially {S} {0:s}, subsequently {1:s}, and eventually {2:s}",
        "prior to {2:ing}, {S} {0:s} and subsequently {1:s}", "having {0:en}, {S} {1:s}; lastly {2:s}",
        "{S} begins by {0:ing}, proceeds to {1:base}, and concludes by {2:ing}",
        "{S} {1:s} once done {0:ing}, and later on {2:s}",
        "{S} {0:s}, with {1:ing} coming next and {2:ing} last of all", "{S} {0:s}; {1:s}; lastly {2:s}"],
}

PHRASES = {
    "walk": ["^tread {hdir}", "^tread {hspd} {hdir}", "^proceed on foot {hdir}", "^proceed {hdir} {hspd}",
             ("^saunter {hdir}", {"speed": ("slow", "normal")}), ("^scurry {hdir}", {"speed": ("fast",)})],
    "run": ["^race {hdir}", "^bolt {hdir}", "^charge {hdir}"],
    "jump": ["^spring upward {hcnt}", "^bounce off the floor {hcnt}", "^spring into the air"],
    "wave": ["^signal with {harm}", "^signal hi using {harm} {hcnt}", "^gesture a greeting using {harm}"],
    "squat": ["^sink low {hcnt}", "^sink low at the knees {hcnt}", "^perform {n:deep knee dip}"],
    "sit down": ["^settle onto a stool", "^perch on a stool", "^settle into a seated posture"],
    "stand up": ["^straighten up to full height", "^return to an upright stance", "^assume an upright stance"],
    "turn around": ["^pivot {hside}", "^swivel {hside} to face behind", "^rotate half a circle {hside}"],
    "kick": ["^swing {hleg} outward {hcnt}", "^thrust {hleg} ahead"],
    "clap": ["^applaud {hcnt}", "^smack the palms together {hcnt}"],
    "fall": ["^collapse {hfall}", "^topple over {hfall}", "^keel over {hfall}"],
    "bend over": ["^fold forward {hcnt}", "^hinge at the hips {hcnt}", "^fold at the hips"],
    "punch": ["^strike out using {harm} {hcnt}", "^hit out with {harm}"],
    "jumping jacks": ["^perform {n:side-straddle}", "^carry out {n:side-straddle}"],
}
LEXICON = {
    "hdir": {"towards": ["nearer to the antenna", "in the antenna's direction"],
             "away": ["farther from the antenna", "off into the distance"],
             "left": ["in the leftward direction", "leftward across the room"],
             "right": ["in the rightward direction", "rightward across the room"]},
    "hspd": {"slow": ["at a gentle tempo", "in a relaxed manner"], "normal": ["", "at an ordinary tempo"],
             "fast": ["at high speed", "in a rush"]},
    "hside": {"left": ["counterclockwise"], "right": ["clockwise"]},
    "hfall": {"forward": ["frontward"], "backward": ["rearward"]},
    "harm": {"left": ["the left-side arm"], "right": ["the right-side arm"], "both": ["each arm"]},
    "hleg": {"left": ["the left-side leg"], "right": ["the right-side leg"]},
}
FACT_OF = {"hdir": "dir", "hspd": "speed", "hside": "side", "hfall": "fall", "harm": "arm", "hleg": "leg"}


def counts(n):
    """Digits, never the number words of training: "3 times", "for 3 repetitions"."""
    return ["a single time", "for 1 repetition"] if n == 1 else [f"{n} times", f"for {n} repetitions"]


def lexicon(key, facts):
    return counts(facts["reps"]) if key == "hcnt" else LEXICON[key][facts[FACT_OF[key]]]


def counted(n, noun):
    return [f"a single {noun}"] if n == 1 else [f"{n} {noun}s"]


IRREGULAR = {"tread": {"ed": "trod", "en": "trodden"}, "spring": {"ed": "sprang", "en": "sprung"},
             "swing": {"ed": "swung"}, "thrust": {"ed": "thrust"}, "strike": {"ed": "struck"},
             "hit": {"ed": "hit"}, "sink": {"ed": "sank", "en": "sunk"}}
DOUBLE = frozenset({"hit", "signal"})

HELDOUT = Grammar(frames=FRAMES, subjects=SUBJECTS, phrases=PHRASES, lexicon=lexicon, counted=counted,
                  irregular=IRREGULAR, double=DOUBLE)

HELDOUT_ACTION_PROMPTS = {
    "walk": "an adult treads across the floor", "run": "an adult races across the floor",
    "jump": "an adult springs into the air", "wave": "an adult signals hi using one arm",
    "squat": "an adult sinks low at the knees", "sit down": "an adult settles onto a stool",
    "stand up": "an adult straightens up to full height", "turn around": "an adult pivots to face behind",
    "kick": "an adult swings a leg outward", "clap": "an adult applauds",
    "fall": "an adult collapses onto the floor", "bend over": "an adult folds at the hips",
    "punch": "an adult strikes the air using one arm", "jumping jacks": "an adult performs side-straddles",
}


def clip_rng(clip_id):
    return np.random.default_rng([SALT, zlib.crc32(str(clip_id).encode())])


def heldout_captions(actions, clip_id, num=NUM_CAPTIONS, max_words=MAX_WORDS):
    """(captions, order-swapped captions) of a clip's meta actions, as the
    loader serves captions (clean_caption: lower case, no final period)."""
    caps, swapped = make(HELDOUT, actions, clip_rng(clip_id), num, max_words)
    return [clean_caption(c) for c in caps], [clean_caption(c) for c in swapped]
