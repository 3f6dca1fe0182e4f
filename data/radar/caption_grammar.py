"""The machinery the radar caption grammars share (no words of their own).

A grammar (data/radar/captions.py: the training grammar ``diverse``;
data/radar/heldout.py: the frozen held-out one) is a module-level
``Grammar``: sentence frames per number of actions, subjects, phrase
templates per action and the fill words of every concept (directions,
speeds, counts, limbs, ...). This module turns them into sentences and
enumerates everything a grammar can produce, so tests can check the two
grammars against each other exhaustively.

Frames: ``{S}`` the subject, ``{P}`` its pronoun, ``{k:form}`` the phrase
of the k-th action IN TIME ORDER in a verb form: ``s`` (walks), ``ing``
(walking), ``base`` (walk), ``ed`` (walked), ``en`` (walked / fallen) or
``p`` (agreeing with the pronoun: "he walks", "they walk"). The slot index
is the time order, whatever the surface order: "before {1:ing}, {S}
{0:s}" says action 0 happens first. The order-swapped caption fills the
same frame with the phrases permuted, so it swaps the time order in every
frame, reversed-surface ones included.

Phrase templates: ``^lemma`` marks a verb conjugated into the slot's form
("^trip and ^fall {fall}"); ``{key}`` a fill drawn from the grammar's
lexicon for the action's facts (``{dir}``, ``{spd}``, ``{cnt}``, ...;
``{n:noun}`` a counted noun, "two squats"); ``{pos}`` / ``{refl}`` the
subject's possessive / reflexive pronoun.
"""
import itertools
import re
from dataclasses import dataclass, field

SLOT = re.compile(r"\{(\d):(s|ing|base|ed|en|p)\}")
FILL = re.compile(r"\{([a-z]+)(?::([a-z -]+))?\}")
VERB = re.compile(r"\^([a-z]+)")
FORMS = ("s", "ing", "base", "ed", "en")


@dataclass(frozen=True)
class Subject:
    noun: str      # "a man"
    pron: str      # "he" / "she" / "they"
    pos: str       # "his"
    refl: str      # "himself"


@dataclass
class Grammar:
    frames: dict            # {num actions: [frame, ...]}
    subjects: tuple         # (Subject, ...)
    phrases: dict           # {action: [template or (template, {fact: allowed values})]}
    lexicon: object         # lexicon(key, facts) -> [fill words]
    counted: object         # counted(n, noun) -> [counted-noun phrases]
    irregular: dict = field(default_factory=dict)   # {lemma: {form: word}}
    double: frozenset = frozenset()                 # lemmas doubling their last consonant


def speed_class(v):
    """A walk's speed (m/s) as the captions say it (the template's bounds)."""
    return "slow" if v < 0.9 else "fast" if v > 1.4 else "normal"


def action_facts(action):
    """What a caption may say about one action dict {"name", "params"}."""
    name, p = action["name"], action.get("params", {})
    f = {"name": name, "reps": int(p.get("reps", 1))}
    if name == "walk":
        f.update(dir=p["direction"], speed=speed_class(p["speed"]))
    elif name == "run":
        f.update(dir=p["direction"], speed="fast")
    elif name == "turn around":
        f["side"] = p.get("direction", "left")
    elif name == "fall":
        f["fall"] = p.get("direction", "forward")
    elif name == "kick":
        f["leg"] = p.get("leg", "right")
    elif name in ("wave", "punch"):
        f["arm"] = p.get("arm", "both")
    return f


def conjugate(g, lemma, form):
    irr = g.irregular.get(lemma, {})
    if form in irr:
        return irr[form]
    if form == "base":
        return lemma
    if form == "s":
        if lemma.endswith(("s", "sh", "ch", "x", "z")):
            return lemma + "es"
        return lemma[:-1] + "ies" if re.search(r"[^aeiou]y$", lemma) else lemma + "s"
    stem = lemma + lemma[-1] if lemma in g.double else lemma
    if form == "ing":
        if lemma.endswith("ie"):
            return lemma[:-2] + "ying"
        return (lemma[:-1] if re.search(r"[^aeiou]e$", lemma) else stem) + "ing"
    if form == "en" and "ed" in irr:
        return irr["ed"]
    if lemma.endswith("e"):
        return lemma + "d"
    return lemma[:-1] + "ied" if re.search(r"[^aeiou]y$", lemma) else stem + "ed"


def templates_for(g, facts):
    """The phrase templates whose conditions hold for these facts."""
    out = []
    for entry in g.phrases[facts["name"]]:
        tpl, cond = entry if isinstance(entry, tuple) else (entry, {})
        if all(facts.get(k) in v for k, v in cond.items()):
            out.append(tpl)
    return out


def fill_options(g, key, noun, facts):
    return g.counted(facts["reps"], noun) if key == "n" else g.lexicon(key, facts)


def choose_phrase(g, facts, rng):
    """One phrase of the action with its fills drawn: a template left with
    ``^verbs`` and ``{pos}`` / ``{refl}`` only."""
    tpls = templates_for(g, facts)
    tpl = tpls[int(rng.integers(len(tpls)))]

    def fill(m):
        if m.group(1) in ("pos", "refl"):
            return m.group(0)
        opts = fill_options(g, m.group(1), m.group(2), facts)
        return opts[int(rng.integers(len(opts)))]
    return FILL.sub(fill, tpl)


def expand_phrases(g, facts):
    """Every filled phrase (as choose_phrase returns them) of the action."""
    out = []
    for tpl in templates_for(g, facts):
        keys = [(m.group(1), m.group(2)) for m in FILL.finditer(tpl) if m.group(1) not in ("pos", "refl")]
        for combo in itertools.product(*[fill_options(g, k, n, facts) for k, n in keys]):
            it = iter(combo)
            out.append(FILL.sub(lambda m: m.group(0) if m.group(1) in ("pos", "refl") else next(it), tpl))
    return out


def tidy(text):
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([,.;])", r"\1", text)


def render_phrase(g, phrase, form, subject):
    """A filled phrase in a verb form for a subject: "^wave {pos} left hand" ->
    "waving his left hand"."""
    if form == "p":
        form = "base" if subject.pron == "they" else "s"
    text = VERB.sub(lambda m: conjugate(g, m.group(1), form), phrase)
    return tidy(text.replace("{pos}", subject.pos).replace("{refl}", subject.refl))


def render(g, frame, subject, phrases):
    """The frame with phrases[k] in slot k (k = time order)."""
    text = SLOT.sub(lambda m: render_phrase(g, phrases[int(m.group(1))], m.group(2), subject), frame)
    return tidy(text.replace("{S}", subject.noun).replace("{P}", subject.pron))


def literal_pieces(frame):
    """The frame's own words between its slots (its connectors), lower case,
    punctuation dropped: "before {1:ing}, {S} {0:s}" -> ["before"]."""
    parts = re.split(r"\{S\}|\{P\}|\{\d:[a-z]+\}", frame)
    pieces = [re.sub(r"[^a-z' ]", " ", p).split() for p in parts]
    return [" ".join(p) for p in pieces if p]


def slot_order(frame):
    """Time indices of the frame's action slots in surface order."""
    return [int(m.group(1)) for m in SLOT.finditer(frame)]


def make(g, actions, rng, num, max_words, tries=20):
    """`num` distinct captions of the action sequence and, index-aligned, their
    order-swapped versions (same frame, subject and phrases, the actions'
    time order permuted; [] for one action). Captions end in a period."""
    facts = [action_facts(a) for a in actions]
    n = len(actions)
    perms = [p for p in itertools.permutations(range(n)) if list(p) != sorted(p)]
    frames = g.frames[n]
    caps, swapped = [], []
    for _ in range(num * tries):
        subject = g.subjects[int(rng.integers(len(g.subjects)))]
        frame = frames[int(rng.integers(len(frames)))]
        phrases = [choose_phrase(g, f, rng) for f in facts]
        cap = render(g, frame, subject, phrases) + "."
        if len(cap.split()) > max_words or cap in caps:
            continue
        caps.append(cap)
        if perms:
            perm = perms[int(rng.integers(len(perms)))]
            swapped.append(render(g, frame, subject, [phrases[i] for i in perm]) + ".")
        if len(caps) == num:
            break
    if not caps:   # rare long sequences: the shortest sentence the grammar has for them
        cap, sw = shortest(g, facts, perms)
        if len(cap.split()) <= max_words:
            return [cap], [sw] if sw else []
        raise RuntimeError(f"no caption of at most {max_words} words for {[a['name'] for a in actions]}")
    return caps, swapped


def shortest(g, facts, perms):
    """(caption, swapped or None) with the fewest words: shortest subject, frame and phrases."""
    subject = min(g.subjects, key=lambda s: len(s.noun.split()))
    phrases = [min(expand_phrases(g, f), key=lambda p: len(render_phrase(g, p, "ing", subject).split()))
               for f in facts]
    frame = min(g.frames[len(facts)], key=lambda fr: len(render(g, fr, subject, phrases).split()))
    sw = render(g, frame, subject, [phrases[i] for i in perms[0]]) + "." if perms else None
    return render(g, frame, subject, phrases) + ".", sw


REPEATED = ("jump", "wave", "squat", "kick", "clap", "bend over", "punch", "jumping jacks")
MAX_REPS = 7   # the most repetitions data/radar/actions.py draws (clap: 3-7)


def fact_space(name):
    """Every facts dict an action can have (a superset: reps 1..MAX_REPS for
    every repeated action), for exhaustive inventories."""
    p = {"walk": [{"direction": d, "speed": v} for d in ("towards", "away", "left", "right")
                  for v in (0.6, 1.2, 1.7)],
         "run": [{"direction": d, "speed": 2.5} for d in ("towards", "away", "left", "right")],
         "turn around": [{"direction": d} for d in ("left", "right")],
         "fall": [{"direction": d} for d in ("forward", "backward")]}.get(name, [{}])
    if name in REPEATED:
        p = [dict(q, reps=r) for q in p for r in range(1, MAX_REPS + 1)]
    if name == "kick":
        p = [dict(q, leg=s) for q in p for s in ("left", "right")]
    if name in ("wave", "punch"):
        p = [dict(q, arm=a) for q in p for a in ("left", "right", "both")]
    return [action_facts({"name": name, "params": q}) for q in p]
