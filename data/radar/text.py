"""HumanML3D-style captions for a clip's action sequence.

Every action has phrase templates in two forms: present tense ("walks
quickly towards the radar") and gerund ("walking quickly towards the radar"),
filled with its parameters (direction relative to the radar, speed,
repetitions, arm/leg). A caption joins the phrases of the actions in order
with a temporal connector ("then", "after that", "before", "after ...",
"first ... then"). ``make_captions`` also returns, for each caption, the
same sentence with the actions in another order: the temporal hard
negatives of evaluation.

Captions are kept to at most ``max_words`` words so the loader's
``max_text_len`` (seed 001: 20) never cuts off the last action.
"""
import itertools

import numpy as np

SUBJECTS = ("a person", "someone", "a man", "a woman", "the person", "a human")
COUNT = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times",
         6: "six times", 7: "seven times"}
# Zero-shot prompts: one short description per action.
ACTION_PROMPTS = {
    "walk": "a person walks", "run": "a person runs", "jump": "a person jumps",
    "wave": "a person waves", "squat": "a person squats", "sit down": "a person sits down",
    "stand up": "a person stands up", "turn around": "a person turns around",
    "kick": "a person kicks", "clap": "a person claps", "fall": "a person falls down",
    "bend over": "a person bends over", "punch": "a person punches",
    "jumping jacks": "a person does jumping jacks",
}

# Present-tense and gerund phrase templates of the in-place actions.
PHRASES = {
    "jump": [("jumps {t}", "jumping {t}"), ("jumps up and down {t}", "jumping up and down {t}"),
             ("hops in place {t}", "hopping in place {t}")],
    "wave": [("waves {a}", "waving {a}"), ("waves {a} {t}", "waving {a} {t}"),
             ("raises {a} and waves", "raising {a} and waving")],
    "squat": [("squats {t}", "squatting {t}"), ("does a squat {t}", "doing a squat {t}"),
              ("crouches down {t}", "crouching down {t}")],
    "sit down": [("sits down", "sitting down"), ("sits down on a chair", "sitting down on a chair"),
                 ("takes a seat", "taking a seat")],
    "stand up": [("stands up", "standing up"), ("gets up", "getting up"),
                 ("rises to their feet", "rising to their feet")],
    "turn around": [("turns around to the {d}", "turning around to the {d}"),
                    ("turns around", "turning around"), ("turns back", "turning back")],
    "kick": [("kicks with the {l} leg {t}", "kicking with the {l} leg {t}"),
             ("kicks {t} with the {l} foot", "kicking {t} with the {l} foot"),
             ("kicks forward {t}", "kicking forward {t}")],
    "clap": [("claps {t}", "clapping {t}"), ("claps the hands {t}", "clapping the hands {t}"),
             ("claps", "clapping")],
    "fall": [("falls {f}", "falling {f}"), ("falls down {f}", "falling down {f}"),
             ("trips and falls {f}", "tripping and falling {f}")],
    "bend over": [("bends over", "bending over"), ("bends over {t}", "bending over {t}"),
                  ("bends forward at the waist", "bending forward at the waist")],
    "punch": [("punches with {a}", "punching with {a}"), ("throws punches with {a}", "throwing punches with {a}"),
              ("punches forward {t}", "punching forward {t}")],
    "jumping jacks": [("does jumping jacks", "doing jumping jacks"),
                      ("does {t2} jumping jacks", "doing {t2} jumping jacks")],
}


# Fill words (module level so tests can enumerate every caption; the draws are as before).
DIRECTIONS = {
    "towards": ["towards the radar", "toward the sensor", "closer to the radar"],
    "away": ["away from the radar", "away from the sensor"],
    "left": ["to the left", "sideways to the left", "leftwards"],
    "right": ["to the right", "sideways to the right", "rightwards"],
}
SLOW, FAST = ["slowly ", "leisurely "], ["quickly ", "briskly "]


def _direction(d, rng):
    return str(rng.choice(DIRECTIONS[d]))


def _speed(v, rng):
    if v < 0.9:
        return str(rng.choice(SLOW))
    if v > 1.4:
        return str(rng.choice(FAST))
    return ""


def _arm(a, noun):
    return {"left": f"the left {noun}", "right": f"the right {noun}", "both": f"both {noun}s"}[a]


def action_phrases(action, rng):
    """(present, gerund) phrase for one action dict {"name", "params"}."""
    name, p = action["name"], action.get("params", {})
    n = p.get("reps", 1)
    times = COUNT.get(n, f"{n} times")
    if name in ("walk", "run"):
        speed = _speed(p["speed"], rng) if name == "walk" else str(rng.choice(["", "fast "]))
        where = _direction(p["direction"], rng)
        verb = {"walk": ("walks", "walking"), "run": (str(rng.choice(["runs", "jogs"])), None)}[name]
        ger = verb[1] or ("running" if verb[0] == "runs" else "jogging")
        return f"{verb[0]} {speed}{where}", f"{ger} {speed}{where}"
    present, gerund = PHRASES[name][rng.integers(len(PHRASES[name]))]
    fill = {"t": times, "t2": str(n), "a": _arm(p.get("arm", "both"), "hand" if name == "wave" else "fist"),
            "d": p.get("direction", "left"), "l": p.get("leg", "right"),
            "f": {"forward": "forward", "backward": "backwards"}.get(p.get("direction"), "")}
    return present.format(**fill).strip(), gerund.format(**fill).strip()


def _join(subject, parts, style):
    """One caption from the (present, gerund) phrases of actions in order."""
    pres = [p for p, _ in parts]
    if len(parts) == 1:
        return f"{subject} {pres[0]}"
    if len(parts) == 2:
        a, b = parts
        return [f"{subject} {a[0]}, then {b[0]}", f"{subject} {a[0]} and after that {b[0]}",
                f"{subject} {a[0]} before {b[1]}", f"after {a[1]}, {subject} {b[0]}"][style]
    a, b, c = parts
    return [f"{subject} {a[0]}, then {b[0]}, then {c[0]}",
            f"first {subject} {a[0]}, then {b[0]}, and finally {c[0]}",
            f"{subject} {a[0]}, after that {b[0]} and then {c[0]}",
            f"after {a[1]}, {subject} {b[0]} and then {c[0]}"][style]


def make_captions(actions, rng, num=4, max_words=20):
    """`num` distinct paraphrases of the action sequence and, index-aligned, their
    order-swapped versions: (captions, swapped).

    swapped[k] uses caption k's subject, connector and phrases with the actions
    in another order, so the two differ only in order (the hardest temporal
    negative); swapped is [] for a one-action clip.
    """
    perms = [p for p in itertools.permutations(range(len(actions))) if list(p) != sorted(p)]
    caps, swapped = [], []
    for _ in range(num * 10):
        subject, style = str(rng.choice(SUBJECTS)), int(rng.integers(4))
        parts = [action_phrases(a, rng) for a in actions]
        cap = _join(subject, parts, style) + "."
        if len(cap.split()) > max_words or cap in caps:
            continue
        caps.append(cap)
        if perms:
            perm = perms[int(rng.integers(len(perms)))]
            swapped.append(_join(subject, [parts[i] for i in perm], style) + ".")
        if len(caps) == num:
            break
    if not caps:
        raise RuntimeError(f"no caption of at most {max_words} words for {[a['name'] for a in actions]}")
    return caps, swapped


def clean_caption(line, max_words=None):
    """HumanML3D text line -> caption as served: text before the first #, lower case,
    no trailing period, at most max_words words."""
    text = line.split("#", 1)[0].strip().lower().rstrip(".").strip()
    if max_words:
        text = " ".join(text.split()[:max_words])
    return text


def pos_tags(caption):
    """HumanML3D's second field: word/POS tokens (a coarse tagger for our vocabulary)."""
    det = {"a", "the", "an", "both"}
    adp = {"to", "towards", "toward", "from", "with", "on", "at", "in", "after", "before", "of", "up", "down"}
    adv = {"then", "slowly", "quickly", "briskly", "leisurely", "fast", "first", "finally", "once", "twice",
           "away", "forward", "backwards", "sideways", "closer", "back", "leftwards", "rightwards", "times"}
    toks = []
    for w in caption.lower().replace(",", " ").replace(".", " ").split():
        tag = ("DET" if w in det else "ADP" if w in adp else "ADV" if w in adv else
               "CCONJ" if w == "and" else "VERB" if w.endswith(("s", "ing")) and w not in ("hands", "times") else "NOUN")
        toks.append(f"{w}/{tag}")
    return " ".join(toks)


def humanml3d_lines(captions):
    """texts/{id}.txt content: caption#tokens#start#end (0.0 = the whole clip)."""
    return "".join(f"{c}#{pos_tags(c)}#0.0#0.0\n" for c in captions)
