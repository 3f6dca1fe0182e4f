"""Everything each radar caption grammar can say, enumerated (no sampling).

``inventory("diverse" | "template" | "heldout")`` -> Inventory: frames per
number of actions (in data/radar/caption_grammar.py's frame syntax; the
template's four connectors a length rewritten in it), subjects, pronouns,
every phrase of an action in a verb form, and the fill words of each
concept (directions, speeds, counts, limbs, turn / fall directions) per
value. ``time_orders`` parses a caption back into the time order of its
actions from the frame definitions alone. tests/test_radar_heldout.py and
tests/test_radar_captions.py check the grammars against each other with
these.
"""
import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

from data.radar import captions as diverse
from data.radar import heldout, text
from data.radar.caption_grammar import FORMS, SLOT, action_facts, expand_phrases, fact_space, render_phrase

# data/radar/text.py's _join, frame by frame (s: present, ing: gerund)
TEMPLATE_FRAMES = {
    1: ["{S} {0:s}"],
    2: ["{S} {0:s}, then {1:s}", "{S} {0:s} and after that {1:s}", "{S} {0:s} before {1:ing}",
        "after {0:ing}, {S} {1:s}"],
    3: ["{S} {0:s}, then {1:s}, then {2:s}", "first {S} {0:s}, then {1:s}, and finally {2:s}",
        "{S} {0:s}, after that {1:s} and then {2:s}", "after {0:ing}, {S} {1:s} and then {2:s}"],
}
CONCEPTS = ("dir", "speed", "count", "arm", "leg", "side", "fall")


@dataclass
class Inventory:
    frames: dict        # {n actions: [frame]}
    subjects: tuple     # subject noun phrases
    pronouns: tuple
    phrase_fn: object   # (facts, form) -> set of phrases
    fills: dict         # {concept: {value: set of wordings}}

    def phrases(self, facts, form):
        return self.phrase_fn(tuple(sorted(facts.items())), form)


def _template_phrases(facts, form):
    """Every (present, gerund) phrase data/radar/text.py's action_phrases can return."""
    f = dict(facts)
    name, n = f["name"], f["reps"]
    k = 0 if form == "s" else 1
    if name in ("walk", "run"):
        where = text.DIRECTIONS[f["dir"]]
        if name == "walk":
            speeds = {"slow": text.SLOW, "fast": text.FAST, "normal": [""]}[f["speed"]]
            verbs = [("walks", "walking")]
        else:
            speeds, verbs = ["", "fast "], [("runs", "running"), ("jogs", "jogging")]
        return {f"{v[k]} {s}{w}" for v in verbs for s in speeds for w in where}
    fill = {"t": text.COUNT.get(n, f"{n} times"), "t2": str(n),
            "a": text._arm(f.get("arm", "both"), "hand" if name == "wave" else "fist"),
            "d": f.get("side", "left"), "l": f.get("leg", "right"),
            "f": {"forward": "forward", "backward": "backwards"}.get(f.get("fall"), "")}
    return {pair[k].format(**fill).strip() for pair in text.PHRASES[name]}


def _grammar_phrases(g):
    @lru_cache(maxsize=None)
    def phrases(items, form):
        facts = dict(items)
        subjects = {(s.pron, s.pos, s.refl): s for s in g.subjects}.values()
        forms = {"p": ("s", "base")}.get(form, (form,))
        return frozenset(render_phrase(g, p, fm, s) for p in expand_phrases(g, facts)
                         for s in subjects for fm in forms)
    return phrases


def _template_fills():
    speeds = {"slow": {w.strip() for w in text.SLOW}, "fast": {w.strip() for w in text.FAST} | {"fast"}}
    counts = {n: {text.COUNT[n], str(n)} for n in text.COUNT}
    arms = {a: {text._arm(a, "hand"), text._arm(a, "fist")} for a in ("left", "right", "both")}
    legs = {s: {f"the {s} leg", f"the {s} foot"} for s in ("left", "right")}
    return {"dir": {d: set(w) for d, w in text.DIRECTIONS.items()}, "speed": speeds, "count": counts,
            "arm": arms, "leg": legs, "side": {s: {f"to the {s}"} for s in ("left", "right")},
            "fall": {"forward": {"forward"}, "backward": {"backwards"}}}


def _grammar_fills(mod, g):
    """{concept: {value: wordings}} from a grammar module's LEXICON (FACT_OF names
    each key's concept), counts() and counted() (the count words before the noun);
    possessives filled with every subject's."""
    pos = {s.pos for s in g.subjects}
    out = {c: {} for c in CONCEPTS}
    for key, concept in mod.FACT_OF.items():
        for value, words in mod.LEXICON[key].items():
            out[concept].setdefault(value, set()).update(w.replace("{pos}", p) for w in words for p in pos if w)
    for n in range(1, 8):
        out["count"][n] = set(mod.counts(n)) | {c[:c.rindex(" ")] for c in mod.counted(n, "noun")}
    return out


@lru_cache(maxsize=None)
def inventory(name):
    if name == "template":
        return Inventory(TEMPLATE_FRAMES, text.SUBJECTS, (), lambda items, form: _template_phrases(items, form),
                         _template_fills())
    mod, g = (diverse, diverse.DIVERSE) if name == "diverse" else (heldout, heldout.HELDOUT)
    return Inventory(g.frames, tuple(s.noun for s in g.subjects), tuple({s.pron for s in g.subjects}),
                     _grammar_phrases(g), _grammar_fills(mod, g))


def every_phrase(name):
    """Every phrase the grammar can produce for any action, in any form."""
    inv = inventory(name)
    forms = ("s", "ing") if name == "template" else FORMS
    out = set()
    for action in text.ACTION_PROMPTS:
        for facts in fact_space(action):
            for form in forms:
                out |= inv.phrases(facts, form)
    return out


def _alt(words):
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


def time_orders(name, caption, actions):
    """The time orders a caption states, read from the frame definitions:
    {tuple(j_0, j_1, ...)} with j_k the index in ``actions`` of the action the
    frame's slot k (k-th in time) holds. One element for an unambiguous caption."""
    inv = inventory(name)
    cap = caption.strip().rstrip(".")
    facts = [action_facts(a) for a in actions]
    orders = set()
    for frame in inv.frames[len(actions)]:
        literals = [t for t in re.split(r"\{S\}|\{P\}|\{\d:[a-z]+\}", frame) if t.strip()]
        at = 0
        for t in literals:   # cheap test first: the frame's own words, in order
            at = cap.find(t, at)
            if at < 0:
                break
            at += len(t)
        if at < 0:
            continue
        pattern, slots, pos = "", [], 0
        for m in re.finditer(r"\{S\}|\{P\}|" + SLOT.pattern, frame):
            pattern += re.escape(frame[pos:m.start()])
            if m.group(0) == "{S}":
                pattern += _alt(inv.subjects)
            elif m.group(0) == "{P}":
                pattern += _alt(inv.pronouns)
            else:
                k, form = int(m.group(1)), m.group(2)
                pattern += "(?:" + "|".join(f"(?P<s{k}_{j}>{_alt(inv.phrases(f, form))})"
                                            for j, f in enumerate(facts)) + ")"
                slots.append(k)
            pos = m.end()
        pattern += re.escape(frame[pos:])
        m = re.fullmatch(pattern, cap)
        if m:
            orders.add(tuple(next(j for j in range(len(facts)) if m.group(f"s{k}_{j}") is not None)
                             for k in range(len(actions))))
    return orders


def permutations(n):
    return [p for p in itertools.permutations(range(n)) if list(p) != sorted(p)]
