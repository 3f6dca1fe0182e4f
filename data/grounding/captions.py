"""The `diverse` training grammar of the grounding captions (issue 13).

Captions in the register of Flickr30k Entities ("a big crimson star sits
above a small blue disc", "there is a striped box to the left of a yellow
diamond"): many sentence frames (lists, relations, passives, fronted
relations and positions, two-clause sentences), synonyms for every colour,
shape, size, texture, relation, position and background, and descriptions
that name only as much as picks out one object ("the ring" when the image
holds one circle and it is hollow, "the red one" when only one object is red).

Every entity phrase still refers to exactly one box: a description is
chosen among the attribute subsets that match exactly one of the image's
objects, and every wording belongs to one value of its attribute.
Horizontal wordings all contain "left" or "right", so that a horizontal flip
(data/grounding/spans.swap_left_right) keeps the caption true; no other
wording contains those words.

The held-out grammar (data/grounding/heldout.py) shares no frame, connector
or wording with this one nor with the template (generate.make_captions);
``TRAINING_INVENTORY`` lists every piece either can write, so tests check
that over the whole inventories.
"""
import re
from itertools import product

from data.grounding.format import format_caption

COLOUR_WORDS = {"red": ("red", "crimson", "scarlet"), "green": ("green", "emerald", "bright green"),
                "blue": ("blue", "royal blue", "deep blue"), "yellow": ("yellow", "lemon yellow", "sunny yellow"),
                "purple": ("purple", "violet"), "orange": ("orange", "tangerine", "bright orange"),
                "white": ("white", "pure white"), "black": ("black", "jet black", "pitch black")}
# circles: "ring" only when hollow, "disc"/"dot" only when filled in
SHAPE_WORDS = {"circle": ("circle", "round shape"), "square": ("square", "box", "block"),
               "triangle": ("triangle", "triangular shape"), "diamond": ("diamond", "rhombus"),
               "cross": ("cross", "cross shape"), "star": ("star", "five-pointed star")}
HOLLOW_CIRCLE_WORDS = ("ring",)
FILLED_CIRCLE_WORDS = ("disc", "dot")
NO_SHAPE_WORDS = ("one", "shape", "object")   # the noun when the shape is left out
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
TEXTURE_WORDS = {"striped": ("striped", "stripy", "lined"), "hollow": ("hollow", "outlined", "empty"),
                 "solid": ("solid", "filled", "plain")}
TEXTURE_AFTER = {"striped": ("with stripes",), "hollow": ("in outline",), "solid": ()}  # "a star with stripes"
RELATION_WORDS = {"left": ("to the left of", "left of", "on the left of", "just left of"),
                  "right": ("to the right of", "right of", "on the right of", "just right of"),
                  "above": ("above", "over", "up above"),
                  "below": ("below", "under", "beneath", "underneath")}
VERTICAL_WORDS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
PICTURE_WORDS = ("image", "picture", "frame")
BACKGROUND_WORDS = {"gray": ("gray", "grey"), "beige": ("beige", "tan", "sandy"),
                    "teal": ("teal", "dark teal"), "brown": ("brown", "dark brown")}
BACKGROUND_NOUNS = ("background", "backdrop", "surface")
LIST_CONNECTORS = {2: ("{0} and {1}", "{0} as well as {1}"),
                   3: ("{0} , {1} and {2}", "{0} , {1} , and {2}")}

# Slots: {a X} / {the X} an entity phrase with that article; {L} a list of
# objects (indefinite); {R} where A is relative to B; {P} / {P2} where A / B is.
FRAMES = {
    "list": ("there is {L} on {a G}", "{L} on {a G}", "a picture of {L} on {a G}",
             "this image shows {L} against {a G}", "{L} are drawn on {a G}", "we can see {L}",
             "on {the G} there are {L}", "{a G} with {L} on it"),
    "relation": ("{the A} is {R} {the B}", "{a A} sits {R} {a B}", "{the A} is placed {R} {the B}",
                 "{a A} can be seen {R} {the B}", "{R} {the B} there is {a A}", "{a B} has {a A} {R} it",
                 "there is {a A} {R} {a B}", "{the A} appears {R} {the B}"),
    "position": ("{a A} {P}", "{the A} is {P}", "{P} there is {a A}", "{a A} is shown {P}"),
    "compound": ("{a A} {R} {a B} , and {a C} {P3}", "{a A} {P} and {a B} {P2}"),
}
ENDINGS = (" .", "")
# recorded in the data marker (families/grounding GEN_FORMAT), so that data written by an
# earlier version of this grammar are rebuilt. 2: "plus sign" became "cross shape", leaving
# "plus" to the held-out grammar's "plus symbol"
VERSION = 2
SLOT = re.compile(r"\{(?:(a|the) )?([A-Z]\d?)\}")


def relation_key(a, b):
    """left / right / above / below: where a is relative to b, from box centres (y grows downwards);
    the same rule as the template's."""
    dx = (a["box"][0] + a["box"][2] - b["box"][0] - b["box"][2]) / 2
    dy = (a["box"][1] + a["box"][3] - b["box"][1] - b["box"][3]) / 2
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def position_key(obj, size):
    """(vertical, horizontal): top/bottom/'' and left/right/'' by thirds of the image (the template's rule)."""
    cx, cy = (obj["box"][0] + obj["box"][2]) / 2, (obj["box"][1] + obj["box"][3]) / 2
    v = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else ""
    h = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else ""
    return v, h


def position_words(v, h):
    """Every prepositional phrase this grammar writes for position (v, h)."""
    pics = PICTURE_WORDS
    if v and h:
        out = []
        for vw in VERTICAL_WORDS[v]:
            out += [f"in the {vw} {h}", f"in the {vw} {h} corner", f"at the {vw} {h}"]
            out += [f"in the {vw} {h} corner of the {p}" for p in pics]
        return tuple(out)
    if h:
        return (f"on the {h}", f"on the {h} side", f"on the {h}-hand side",
                *[f"at the {h} of the {p}" for p in pics])
    if v:
        return (f"at the {v}", f"near the {v}", f"in the {VERTICAL_WORDS[v][1]} part",
                *[f"at the {v} of the {p}" for p in pics])
    return ("in the middle", "in the centre", "in the center", *[f"in the middle of the {p}" for p in pics])


def shape_words(shape, texture):
    if shape != "circle":
        return SHAPE_WORDS[shape]
    return SHAPE_WORDS[shape] + (HOLLOW_CIRCLE_WORDS if texture == "hollow" else FILLED_CIRCLE_WORDS)


def article(word, kind):
    if kind == "the":
        return "the"
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def unique_selections(obj, objects):
    """Attribute subsets that match ``obj`` and no other object of the image
    (always holding colour or shape; colour + shape is unique by construction)."""
    out = []
    for size, tex, (col, shp) in product((False, True), (False, True), ((True, True), (True, False), (False, True))):
        sel = [k for k, on in (("size", size), ("colour", col), ("texture", tex), ("shape", shp)) if on]
        if sum(all(o[k] == obj[k] for k in sel) for o in objects) == 1:
            out.append(sel)
    return out


def describe(rng, obj, objects, kind):
    """One entity phrase for obj (its article first) that refers to it alone."""
    sels = unique_selections(obj, objects)
    full = [s for s in sels if "colour" in s and "shape" in s]
    sel = _pick(rng, full) if rng.random() < 0.6 else _pick(rng, sels)
    pre, after = [], []
    if "size" in sel:
        pre.append(_pick(rng, SIZE_WORDS[obj["size"]]))
    colour = [_pick(rng, COLOUR_WORDS[obj["colour"]])] if "colour" in sel else []
    texture = []
    if "texture" in sel:
        if TEXTURE_AFTER[obj["texture"]] and rng.random() < 0.3:
            after.append(_pick(rng, TEXTURE_AFTER[obj["texture"]]))
        else:
            texture.append(_pick(rng, TEXTURE_WORDS[obj["texture"]]))
    pre += texture + colour if rng.random() < 0.25 else colour + texture
    noun = _pick(rng, shape_words(obj["shape"], obj["texture"]) if "shape" in sel else NO_SHAPE_WORDS)
    words = pre + [noun] + after
    return " ".join([article(words[0], kind)] + words)


def _background(rng, bg_name, kind):
    words = [_pick(rng, BACKGROUND_WORDS[bg_name]), _pick(rng, BACKGROUND_NOUNS)]
    return " ".join([article(words[0], kind)] + words)


def render(frame, slots, rng, objects, bg_name, scene_chain):
    """frame text + {slot: object | text} -> marked-up segments."""
    segs, i = [], 0
    for m in SLOT.finditer(frame):
        segs.append(frame[i:m.start()])
        kind, name = m.group(1), m.group(2)
        if name == "G":
            segs.append((scene_chain, "scene", _background(rng, bg_name, kind)))
        elif name == "L":
            listed = slots["L"]
            for p in re.split(r"(\{\d\})", _pick(rng, LIST_CONNECTORS[len(listed)])):
                if re.fullmatch(r"\{\d\}", p):
                    o = listed[int(p[1])]
                    segs.append((o["chain"], "other", describe(rng, o, objects, "a")))
                elif p:
                    segs.append(p)
        elif kind:
            o = slots[name]
            segs.append((o["chain"], "other", describe(rng, o, objects, kind)))
        else:
            segs.append(slots[name])
        i = m.end()
    segs.append(frame[i:])
    return [s for s in segs if s != ""]


def diverse_captions(rng, objects, bg_name, size, n_captions, scene_chain):
    """n_captions marked-up lines of the diverse grammar for one scene.
    rng: the captions' own stream (never the scene's, so images do not change)."""
    caps = []
    for _ in range(n_captions):
        kind = _pick(rng, tuple(FRAMES))   # every scene has 2-5 objects: every kind fits
        frame = _pick(rng, [f for f in FRAMES[kind] if "{a C}" not in f or len(objects) >= 3])
        order = [objects[i] for i in rng.permutation(len(objects))]
        a, b = order[0], order[1]
        c = order[2] if len(order) > 2 else None
        n_list = int(rng.integers(2, min(3, len(objects)) + 1))
        slots = {"A": a, "B": b, "C": c, "L": order[:n_list],
                 "R": _pick(rng, RELATION_WORDS[relation_key(a, b)]),
                 "P": _pick(rng, position_words(*position_key(a, size))),
                 "P2": _pick(rng, position_words(*position_key(b, size))),
                 "P3": _pick(rng, position_words(*position_key(c, size))) if c is not None else None}
        segs = render(frame, slots, rng, objects, bg_name, scene_chain) + [_pick(rng, ENDINGS)]
        caps.append(format_caption(segs))
    return caps


def _all_positions():
    return [w for v, h in product(("top", "bottom", ""), ("left", "right", "")) for w in position_words(v, h)]


# Every piece of text the training grammars (diverse and the template, generate.make_captions)
# can write: a training caption is a concatenation of these, so their words are every word
# a training caption can hold (tests check the held-out grammar against them).
_TEMPLATE_POSITIONS = ["in the " + f"{v} {h}".strip() for v, h in product(("top", "bottom", ""),
                                                                          ("left", "right", "")) if v or h]
TRAINING_INVENTORY = {
    "frames": [f for fs in FRAMES.values() for f in fs]
              + ["There is {L} on {a G} .", "{The A} is {R} {the B} .", "{A A} {P} ."],   # the template's
    "connectors": [c for cs in LIST_CONNECTORS.values() for c in cs],   # the template's are among them
    "colour": {k: list(v) for k, v in COLOUR_WORDS.items()},
    "shape": {k: list(v) + (list(HOLLOW_CIRCLE_WORDS + FILLED_CIRCLE_WORDS) if k == "circle" else [])
              for k, v in SHAPE_WORDS.items()},
    "size": {k: list(v) for k, v in SIZE_WORDS.items()},
    "texture": {k: list(v) + list(TEXTURE_AFTER[k]) for k, v in TEXTURE_WORDS.items()},
    "relation": {k: list(v) for k, v in RELATION_WORDS.items()},
    "position": _all_positions() + _TEMPLATE_POSITIONS + ["in the middle"],
    "background": {k: list(v) for k, v in BACKGROUND_WORDS.items()},
    "other": list(NO_SHAPE_WORDS) + list(BACKGROUND_NOUNS) + ["a", "an", "the", "."],
}


def inventory_words(inventory):
    """Every word (lower-case; split at spaces and hyphens, as a tokenizer would) of an inventory."""
    out = set()

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            out.update(words(re.sub(r"\{[^}]*\}", " ", x)))   # slots are not words
    walk(inventory)
    return out


def words(text):
    return [w for w in re.split(r"[\s\-]+", text.lower()) if w and w not in {",", ".", ";", ":"}]
