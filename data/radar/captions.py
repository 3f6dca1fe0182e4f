"""The training caption grammars of radar clips: ``data.captions``.

``template``: data/radar/text.py, the captions of every dataset before
issue 13 (6 subjects, 2-3 phrases an action, 4 connectors a length), drawn
from the simulator's own random stream right after the clip, bit-identical
to what they were.

``diverse`` (DIVERSE below): captions in the register of HumanML3D's ("a
person walks forward slowly, then turns around and sits down", "someone
squats twice. after that they jump"): 16 subjects with their pronouns, 5-8
phrasings an action, synonyms for directions, speeds, counts and limbs,
past / progressive / gerund forms and 20+ sentence frames for two and for
three actions, among them frames whose surface order is not the time
order ("before X, Y", "Y after X", "Y, but first X"). Drawn from a stream
of their own, ``default_rng([seed, index, 13])``, so the clips are the
same bytes under either grammar.

The held-out grammar of evaluation (data/radar/heldout.py) shares none of
this grammar's frames, connectors, verbs or fill words
(tests/test_radar_heldout.py checks it over both inventories).
"""
import numpy as np

from data.radar.caption_grammar import Grammar, Subject, make
from data.radar.text import make_captions

GENERATORS = ("diverse", "template")
CAPTION_STREAM = 13   # the diverse captions' own stream: default_rng([seed, index, 13])

SUBJECTS = tuple(Subject(*s) for s in (
    ("a person", "they", "their", "themselves"), ("a person", "he", "his", "himself"),
    ("someone", "they", "their", "themselves"), ("somebody", "he", "his", "himself"),
    ("the person", "he", "his", "himself"), ("the person", "they", "their", "themselves"),
    ("a man", "he", "his", "himself"), ("the man", "he", "his", "himself"),
    ("a woman", "she", "her", "herself"), ("the woman", "she", "her", "herself"),
    ("a guy", "he", "his", "himself"), ("a girl", "she", "her", "herself"),
    ("a boy", "he", "his", "himself"), ("a human", "they", "their", "themselves"),
    ("the subject", "they", "their", "themselves"), ("a figure", "they", "their", "themselves")))

# {k:form}: action k in time order (data/radar/caption_grammar.py)
FRAMES = {
    1: ["{S} {0:s}", "{S} {0:ed}", "{S} is {0:ing}", "{S} {0:ing}", "{S} {0:s} and then stops",
        "{S} {0:s} and stops"],
    2: ["{S} {0:s}, then {1:s}", "{S} {0:s} and then {1:s}", "{S} {0:s} and after that {1:s}",
        "{S} {0:s} before {1:ing}", "{S} {0:s} before {P} {1:p}", "before {1:ing}, {S} {0:s}",
        "before {S} {1:s}, {P} {0:p}", "after {0:ing}, {S} {1:s}", "after {S} {0:s}, {P} {1:p}",
        "{S} {1:s} after {0:ing}", "{S} {1:s} after {P} {0:p}", "{S} {1:s}, but first {P} {0:p}",
        "{S} {0:s}. after that {P} {1:p}", "{S} {0:s}. then {P} {1:p}", "first {S} {0:s}, then {P} {1:p}",
        "at first {S} {0:s}, and finally {P} {1:p}", "{S} {0:s}, followed by {1:ing}",
        "{S} {0:s} and afterwards {1:s}", "{S} {0:s} first and then {1:s}", "{S} {0:ed} and then {1:ed}",
        "{S} starts by {0:ing} and then {1:s}", "{S} {0:s}; afterwards, {P} {1:p}",
        "{S} is {0:ing} and then {1:s}", "{0:ing} first, {S} then {1:s}", "{S} {0:s} and next {1:s}"],
    3: ["{S} {0:s}, then {1:s}, then {2:s}", "first {S} {0:s}, then {1:s}, and finally {2:s}",
        "{S} {0:s}, {1:s}, and then {2:s}", "{S} {0:s}, {1:s} and {2:s}",
        "at first {S} {0:s}, then {P} {1:p}, finally {P} {2:p}",
        "after {0:ing}, {S} {1:s} and then {2:s}", "{S} {1:s} after {0:ing}, then {2:s}",
        "before {2:ing}, {S} {0:s} and {1:s}", "{S} {0:s}. after that {P} {1:p} and {2:p}",
        "{S} {0:s} and then {1:s} before {2:ing}", "{S} {2:s} after {0:ing} and {1:ing}",
        "{S} {1:s}, then {2:s}, but first {P} {0:p}", "{S} starts by {0:ing}, then {1:s}, and ends by {2:ing}",
        "{S} {0:ed}, {1:ed}, and then {2:ed}", "{S} {0:s} first, {1:s} next, and {2:s} last",
        "{S} {0:s}. next {P} {1:p}. finally {P} {2:p}", "after {0:ing} and {1:ing}, {S} {2:s}",
        "{S} {0:s}, after which {P} {1:p} and then {2:p}", "{S} {0:s} before {1:ing} and finally {2:ing}",
        "{S} {0:s}, then {1:s} and {2:s}"],
}

PHRASES = {
    "walk": ["^walk {spd} {dir}", "^walk {dir} {spd}", "^take a few steps {dir}", "^step {dir}",
             "^head {dir} {spd}", "^move {dir}", ("^stroll {dir}", {"speed": ("slow", "normal")}),
             ("^amble {dir}", {"speed": ("slow",)}), ("^shuffle {dir}", {"speed": ("slow",)}),
             ("^hurry {dir}", {"speed": ("fast",)})],
    "run": ["^run {dir}", "^run {rspd} {dir}", "^jog {dir}", "^jog {rspd} {dir}", "^sprint {dir}",
            "^dash {dir}", "^run {dir} {rspd}"],
    "jump": ["^jump {cnt}", "^jump up and down {cnt}", "^jump in place {cnt}", "^leap into the air {cnt}",
             "^do {n:jump}", "^jump up {cnt}"],
    "wave": ["^wave {hand}", "^wave {hand} {cnt}", "^wave with {hand}", "^raise {hand} and ^wave",
             "^wave hello with {hand}", "^wave {hand} in the air"],
    "squat": ["^squat {cnt}", "^squat down {cnt}", "^do {n:squat}", "^crouch down {cnt}",
              "^go down into a squat {cnt}"],
    "sit down": ["^sit down", "^sit down on a chair", "^take a seat", "^sit on a chair",
                 "^lower {refl} into a chair", "^sit"],
    "stand up": ["^stand up", "^get up", "^rise to {pos} feet", "^get back on {pos} feet",
                 "^stand back up", "^rise up"],
    "turn around": ["^turn around", "^turn around {side}", "^spin around {side}", "^turn back",
                    "^turn to face the other way", "^do a half turn {side}", "^turn {refl} around"],
    "kick": ["^kick with {leg} {cnt}", "^kick {cnt} with {leg}", "^kick forward {cnt}",
             "^kick {leg} out {cnt}", "^do {n:kick} with {leg}", "^kick {leg} forward"],
    "clap": ["^clap {cnt}", "^clap {pos} hands {cnt}", "^clap", "^clap {pos} hands together {cnt}",
             "^clap {pos} hands", "^give {n:clap}"],
    "fall": ["^fall {fdir}", "^fall down {fdir}", "^trip and ^fall {fdir}", "^stumble and ^fall {fdir}",
             "^lose {pos} balance and ^fall {fdir}", ("^fall on {pos} face", {"fall": ("forward",)}),
             ("^fall flat on {pos} stomach", {"fall": ("forward",)}),
             ("^fall onto {pos} back", {"fall": ("backward",)})],
    "bend over": ["^bend over {cnt}", "^bend forward at the waist {cnt}", "^bend down {cnt}",
                  "^lean forward and ^bend over", "^bend over to touch {pos} toes", "^stoop down {cnt}"],
    "punch": ["^punch with {fist} {cnt}", "^throw punches with {fist}", "^punch forward {cnt}",
              "^box with {fist}", "^throw {n:punch} with {fist}", "^jab with {fist} {cnt}",
              "^punch the air {cnt}"],
    "jumping jacks": ["^do jumping jacks", "^do {n:jumping jack}", "^do {n:star jump}",
                      "^do jumping jacks {cnt}"],
}

NUMBER = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
LEXICON = {
    "dir": {"towards": ["towards the radar", "toward the radar", "toward the sensor", "towards the camera",
                        "closer to the radar", "up to the sensor", "in the direction of the radar"],
            "away": ["away from the radar", "away from the sensor", "away from the camera",
                     "further away from the radar"],
            "left": ["to the left", "leftwards", "sideways to the left", "toward the left", "to the left side"],
            "right": ["to the right", "rightwards", "sideways to the right", "toward the right",
                      "to the right side"]},
    "spd": {"slow": ["slowly", "leisurely", "at a slow pace", "unhurriedly", "very slowly"],
            "normal": ["", "at a normal pace", "at a steady pace"],
            "fast": ["quickly", "briskly", "fast", "at a fast pace", "hurriedly", "at a quick pace"]},
    "rspd": {"fast": ["", "fast", "quickly"]},
    "side": {"left": ["to the left", "to {pos} left", "leftwards", "over {pos} left shoulder"],
             "right": ["to the right", "to {pos} right", "rightwards", "over {pos} right shoulder"]},
    "fdir": {"forward": ["forward", "forwards", "to the front"],
             "backward": ["backward", "backwards", "over backwards"]},
    "hand": {"left": ["{pos} left hand", "the left hand", "{pos} left arm", "the left arm"],
             "right": ["{pos} right hand", "the right hand", "{pos} right arm", "the right arm"],
             "both": ["both hands", "both arms", "both of {pos} hands", "{pos} hands"]},
    "fist": {"left": ["{pos} left fist", "the left fist", "{pos} left hand", "the left arm"],
             "right": ["{pos} right fist", "the right fist", "{pos} right hand", "the right arm"],
             "both": ["both fists", "both hands", "both arms", "{pos} fists"]},
    "leg": {"left": ["{pos} left leg", "the left leg", "{pos} left foot", "the left foot"],
            "right": ["{pos} right leg", "the right leg", "{pos} right foot", "the right foot"]},
}
FACT_OF = {"dir": "dir", "spd": "speed", "rspd": "speed", "side": "side", "fdir": "fall",
           "hand": "arm", "fist": "arm", "leg": "leg"}


def counts(n):
    """Repetition adverbs: "once", "two times", "three times in a row"."""
    if n == 1:
        return ["once", "one time"]
    if n == 2:
        return ["twice", "two times", "two times in a row"]
    return [f"{NUMBER[n]} times", f"{NUMBER[n]} times in a row"]


def lexicon(key, facts):
    if key == "cnt":
        return counts(facts["reps"])
    return LEXICON[key][facts[FACT_OF[key]]]


def counted(n, noun):
    plural = noun + "es" if noun.endswith(("ch", "sh", "s")) else noun + "s"
    return [f"a {noun}", f"one {noun}"] if n == 1 else [f"{NUMBER[n]} {plural}"]


IRREGULAR = {
    "run": {"ed": "ran", "en": "run"}, "sit": {"ed": "sat"}, "take": {"ed": "took", "en": "taken"},
    "stand": {"ed": "stood"}, "get": {"ed": "got"}, "rise": {"ed": "rose", "en": "risen"},
    "go": {"s": "goes", "ed": "went", "en": "gone"}, "do": {"s": "does", "ed": "did", "en": "done"},
    "fall": {"ed": "fell", "en": "fallen"}, "lose": {"ed": "lost"}, "bend": {"ed": "bent"},
    "throw": {"ed": "threw", "en": "thrown"}, "give": {"ed": "gave", "en": "given"},
    "leap": {"ed": "leaped"}, "spin": {"ed": "spun"}, "lower": {"ed": "lowered"},
}
DOUBLE = frozenset({"run", "jog", "step", "sit", "squat", "get", "clap", "trip", "spin", "stop", "jab"})

DIVERSE = Grammar(frames=FRAMES, subjects=SUBJECTS, phrases=PHRASES, lexicon=lexicon, counted=counted,
                  irregular=IRREGULAR, double=DOUBLE)


def make_diverse_captions(actions, rng, num=4, max_words=20):
    """(captions, order-swapped captions) from the diverse grammar (make_captions' contract)."""
    return make(DIVERSE, actions, rng, num, max_words)


def clip_captions(actions, params, index, rng):
    """A generated clip's (captions, swapped) under params["captions"]; ``rng`` is
    the simulator's stream, which only ``template`` draws from (as before)."""
    kind = params.get("captions", "template")
    if kind == "template":
        return make_captions(actions, rng, num=params["num_captions"], max_words=params["max_words"])
    if kind != "diverse":
        raise ValueError(f"data.captions: {kind!r}; expected one of {list(GENERATORS)}")
    own = np.random.default_rng([params["seed"], index, CAPTION_STREAM])
    return make_diverse_captions(actions, own, num=params["num_captions"], max_words=params["max_words"])
