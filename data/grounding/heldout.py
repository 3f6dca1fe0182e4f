"""The held-out caption grammar of the grounding family (issue 13). FROZEN.

Written once and never changed: changing any word or rule here changes every
heldout_ number in experiments.md (and makes them incomparable with the
numbers of earlier checkpoints). Nothing here is imported from the training
grammars, so editing those cannot move it either.

It describes the same content as the training grammars (the scene's objects
by colour, shape, size and texture, where they are and where one is relative
to another, the background) with its own sentence frames, list connectors and
a wording for every colour, shape, size, texture, relation, position and
background that neither training grammar (data/grounding/captions.py,
generate.make_captions) ever writes; tests/test_grounding_heldout.py
checks that over the whole inventories.

Captions are made at evaluation from the generator's scene objects
(``scene_objects.json`` in a generated folder), deterministic per image id:
every checkpoint, also those trained before this grammar existed, is
scored on the same captions. Every entity phrase names colour and shape
(unique in a generated image), so it refers to exactly one box.
"""
import json
import os
import re
import zlib

import numpy as np

from data.grounding.captions import relation_key  # the geometry, not the wording: shared

SALT = 20261201          # with the image id, seeds each image's held-out captions
CAPTIONS_PER_IMAGE = 3
SCENE_OBJECTS = "scene_objects.json"

COLOURS = {"red": "ruby", "green": "jade", "blue": "cobalt", "yellow": "canary", "purple": "plum",
           "orange": "pumpkin", "white": "snowy", "black": "ebony"}
SHAPES = {"circle": "orb", "square": "tile", "triangle": "pyramid", "diamond": "lozenge",
          "cross": "plus symbol", "star": "starburst"}
SIZES = {"small": "miniature", "large": "giant"}
TEXTURES = {"striped": "banded", "hollow": "unfilled", "solid": "opaque"}
RELATIONS = {"left": ("west of", "further left than"), "right": ("east of", "further right than"),
             "above": ("north of", "further up than"), "below": ("south of", "further down than")}
COMPASS = {("top", "left"): "northwest", ("top", "right"): "northeast", ("bottom", "left"): "southwest",
           ("bottom", "right"): "southeast", ("top", ""): "north", ("bottom", ""): "south",
           ("", "left"): "west", ("", "right"): "east"}
BACKGROUNDS = {"gray": "pewter", "beige": "cream", "teal": "aqua", "brown": "chestnut"}
BACKGROUND_NOUN = "canvas"
LIST_CONNECTORS = {2: ("{0} together with {1}", "{0} alongside {1}"),
                   3: ("{0} , {1} together with {2}", "{0} alongside {1} together with {2}")}
# slots as in the training grammar: {a X} / {the X} an entity phrase, {L} a list, {R} where A is
# relative to B, {P} where A is
FRAMES = {
    "relation": ("{a A} perches {R} {a B}", "{a A} hovers {R} {the B}", "one can spot {a A} {R} {the B}",
                 "{the A} resides {R} {the B}"),
    "list": ("the photo features {L} upon {a G}", "{L} rest upon {a G}", "visible here are {L}"),
    "position": ("{a A} lingers {P}", "{P} one can spot {a A}", "{the A} is found {P}"),
}
_SLOT = re.compile(r"\{(?:(a|the) )?([A-Z])\}")


def position_key(obj, width, height):
    """(top/bottom/'', left/right/''): the image's thirds the box centre is in."""
    cx, cy = (obj["box"][0] + obj["box"][2]) / 2, (obj["box"][1] + obj["box"][3]) / 2
    v = "top" if cy < height / 3 else "bottom" if cy > 2 * height / 3 else ""
    h = "left" if cx < width / 3 else "right" if cx > 2 * width / 3 else ""
    return v, h


def position_words(v, h):
    if not (v or h):
        return ("at the heart of the photo",)
    return (f"toward the {COMPASS[(v, h)]}", f"in the {COMPASS[(v, h)]} of the photo")


def _article(word, kind):
    return "the" if kind == "the" else ("an" if word[0] in "aeiou" else "a")


def describe(rng, obj, kind):
    """[size] colour [texture] shape, in this grammar's words; colour + shape make it unique."""
    words = []
    if rng.random() < 0.4:
        words.append(SIZES[obj["size"]])
    words.append(COLOURS[obj["colour"]])
    if rng.random() < 0.4:
        words.append(TEXTURES[obj["texture"]])
    words.append(SHAPES[obj["shape"]])
    return " ".join([_article(words[0], kind)] + words)


def _segments(frame, slots, rng, scene):
    segs, i = [], 0
    for m in _SLOT.finditer(frame):
        segs.append(frame[i:m.start()])
        kind, name = m.groups()
        if name == "G":
            word = BACKGROUNDS[scene["background"]]
            segs.append((scene["scene_chain"], "scene", f"{_article(word, kind)} {word} {BACKGROUND_NOUN}"))
        elif name == "L":
            conn = LIST_CONNECTORS[len(slots["L"])][int(rng.integers(2))]
            for piece in re.split(r"(\{\d\})", conn):
                if re.fullmatch(r"\{\d\}", piece):
                    o = slots["L"][int(piece[1])]
                    segs.append((o["chain"], "other", describe(rng, o, "a")))
                elif piece:
                    segs.append(piece)
        elif kind:
            segs.append((slots[name]["chain"], "other", describe(rng, slots[name], kind)))
        else:
            segs.append(slots[name])
        i = m.end()
    segs.append(frame[i:])
    return [s for s in segs if s]


def _format(segments):
    return "".join(s if isinstance(s, str) else f"[/EN#{s[0]}/{s[1]} {s[2]}]" for s in segments)


def heldout_captions(image_id, scene, n=CAPTIONS_PER_IMAGE):
    """n marked-up caption lines for one scene ({"background", "scene_chain",
    "width", "height", "objects": [{"chain", "box", "colour", "shape", "size",
    "texture"}]}), the same for the same image id every time."""
    rng = np.random.default_rng([zlib.crc32(str(image_id).encode()), SALT])
    objects = scene["objects"]
    kinds = list(FRAMES) if len(objects) >= 2 else ["position"]   # generated scenes hold 2-5 objects
    out = []
    for k in range(n):
        kind = kinds[(k + int(rng.integers(len(kinds)))) % len(kinds)]
        frame = FRAMES[kind][int(rng.integers(len(FRAMES[kind])))]
        order = [objects[i] for i in rng.permutation(len(objects))]
        a, b = order[0], order[1 % len(order)]
        rel = RELATIONS[relation_key(a, b)]
        pos = position_words(*position_key(a, scene["width"], scene["height"]))
        slots = {"A": a, "B": b, "L": order[:int(rng.integers(2, min(3, len(order)) + 1))],
                 "R": rel[int(rng.integers(len(rel)))], "P": pos[int(rng.integers(len(pos)))]}
        out.append(_format(_segments(frame, slots, rng, scene) + [" ."]))
    return out


def load_scenes(root):
    """The generator's scene objects of a data folder, or None if it has none
    (real data, or data generated before issue 13)."""
    path = os.path.join(root, SCENE_OBJECTS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            scenes = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(scenes, dict):
        raise ValueError(f"{path}: expected a mapping image id -> scene, got {type(scenes).__name__}")
    return scenes


# every piece of text this grammar writes (tests compare it with the training grammars')
INVENTORY = {
    "frames": [f for fs in FRAMES.values() for f in fs],
    "connectors": [c for cs in LIST_CONNECTORS.values() for c in cs],
    "colour": {k: [v] for k, v in COLOURS.items()},
    "shape": {k: [v] for k, v in SHAPES.items()},
    "size": {k: [v] for k, v in SIZES.items()},
    "texture": {k: [v] for k, v in TEXTURES.items()},
    "relation": {k: list(v) for k, v in RELATIONS.items()},
    "position": [w for v in ("top", "bottom", "") for h in ("left", "right", "") for w in position_words(v, h)],
    "background": {k: [v] for k, v in BACKGROUNDS.items()},
    "other": [BACKGROUND_NOUN, "a", "an", "the", "."],
}
