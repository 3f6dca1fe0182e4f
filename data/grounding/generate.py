"""Synthetic grounded scenes written in the Flickr30k Entities format.

Each image holds 2-5 objects (shape, colour, size, texture) on a textured
background with unannotated clutter (thin lines, dots) as distractors. Every
object is annotated with a box under its own chain id; each caption names
some of the objects by colour and shape (sometimes size and texture), and by
spatial relations or positions. An object's (colour, shape) is unique in its
image, so every phrase refers to exactly one box.

Two caption grammars (``captions``, the config's data.captions): ``template``
(make_captions below, the captions of before issue 13, kept bit-identical)
and ``diverse`` (data/grounding/captions.py). The images are the same under
both: the template captions always draw from the scene's stream (the next
scene depends on it), the diverse ones from a stream of their own.
The scenes' objects are written to ``scene_objects.json`` so evaluation can
write the held-out captions (data/grounding/heldout.py) for the same images.
"""
import json
import os
import time

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from data.grounding.captions import diverse_captions, position_key, relation_key
from data.grounding.format import format_caption, write_annotation

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 230),
           "yellow": (240, 220, 20), "purple": (150, 40, 200), "orange": (250, 140, 0),
           "white": (250, 250, 250), "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
TEXTURES = ("solid", "striped", "hollow")
SIZES = {"small": (0.16, 0.22), "large": (0.30, 0.40)}  # side as a share of the image
BACKGROUNDS = {"gray": (128, 128, 128), "beige": (200, 185, 150), "teal": (60, 120, 120),
               "brown": (110, 80, 50)}
SPLITS = ("train", "val", "test")
CAPTION_GRAMMARS = ("diverse", "template")
SCENE_OBJECTS = "scene_objects.json"   # {image id: background, scene chain, objects}: what a scene holds
CAPTION_SALT = 13   # the diverse captions' stream: default_rng([seed, split_id, index, CAPTION_SALT])


def _polygon(shape, x0, y0, x1, y1):
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "cross":
        a, b = w / 3, h / 3
        return [(x0 + a, y0), (x1 - a, y0), (x1 - a, y0 + b), (x1, y0 + b), (x1, y1 - b),
                (x1 - a, y1 - b), (x1 - a, y1), (x0 + a, y1), (x0 + a, y1 - b), (x0, y1 - b),
                (x0, y0 + b), (x0 + a, y0 + b)]
    if shape == "star":
        ang = np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [(cx + r * w / 2 * np.cos(t), cy - r * h / 2 * np.sin(t)) for r, t in zip(rad, ang)]
    return None


def draw_object(img, obj):
    """Draw one object into img (PIL RGB) inside obj['box']."""
    x0, y0, x1, y1 = obj["box"]
    colour, shape, texture = COLOURS[obj["colour"]], obj["shape"], obj["texture"]
    mask = Image.new("L", img.size, 0)
    d = ImageDraw.Draw(mask)
    poly = _polygon(shape, x0, y0, x1 - 1, y1 - 1)
    if shape == "circle":
        d.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif shape == "square":
        d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    else:
        d.polygon(poly, fill=255)
    m = np.asarray(mask) > 0
    if texture == "hollow":
        # keep a band of the shape's edge: the shape minus its eroded self
        m = m & ~binary_erosion(m, iterations=max(2, (x1 - x0) // 8))
    elif texture == "striped":
        yy = np.arange(img.size[1])[:, None] + np.arange(img.size[0])[None, :]
        m = m & ((yy // max(3, (x1 - x0) // 8)) % 2 == 0)
    arr = np.asarray(img).copy()
    arr[m] = colour
    return Image.fromarray(arr)


def _background(rng, size):
    name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    base = np.array(BACKGROUNDS[name], float)
    # a linear gradient and pixel noise so the background is not a flat colour
    g = np.linspace(-1, 1, size)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(ang) * g[None, :] + np.sin(ang) * g[:, None]
    arr = base[None, None] + 25 * ramp[..., None] + rng.normal(0, 8, (size, size, 3))
    return name, Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _place(rng, size, n):
    """n non-overlapping square boxes (with a margin), or None if they do not fit."""
    boxes = []
    for _ in range(n):
        for _try in range(50):
            lo, hi = SIZES[list(SIZES)[rng.integers(2)]]
            s = int(rng.uniform(lo, hi) * size)
            x0, y0 = rng.integers(0, size - s + 1, 2)
            b = [int(x0), int(y0), int(x0 + s), int(y0 + s)]
            if all(b[2] + 3 <= c[0] or c[2] + 3 <= b[0] or b[3] + 3 <= c[1] or c[3] + 3 <= b[1]
                   for c in boxes):
                boxes.append(b)
                break
        else:
            return None
    return boxes


def _describe(rng, obj, article):
    words = []
    if rng.random() < 0.5:
        words.append(obj["size"])
    words.append(obj["colour"])
    if obj["texture"] != "solid" and rng.random() < 0.7:
        words.append(obj["texture"])
    words.append(obj["shape"])
    return f"{article} {' '.join(words)}"


RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def _relation(a, b):
    """Where a is relative to b (the rule in data/grounding/captions.relation_key)."""
    return RELATION_WORDS[relation_key(a, b)]


def _position(obj, size):
    return " ".join(w for w in position_key(obj, size) if w) or "middle"


def make_captions(rng, objects, bg_name, size, n_captions, scene_chain):
    caps = []
    kinds = ["list", "relation", "position"]
    for k in range(n_captions):
        kind = kinds[(k + rng.integers(3)) % 3]
        order = rng.permutation(len(objects))
        if kind == "list":
            named = [objects[i] for i in order[:rng.integers(2, min(3, len(objects)) + 1)]]
            seg = ["There is "]
            for j, o in enumerate(named):
                if j:
                    seg.append(" and " if j == len(named) - 1 else " , ")
                seg.append((o["chain"], "other", _describe(rng, o, "a")))
            seg += [" on ", (scene_chain, "scene", f"a {bg_name} background"), " ."]
        elif kind == "relation":
            a, b = objects[order[0]], objects[order[1]]
            seg = [(a["chain"], "other", _describe(rng, a, "The")), f" is {_relation(a, b)} ",
                   (b["chain"], "other", _describe(rng, b, "the")), " ."]
        else:
            a = objects[order[0]]
            seg = [(a["chain"], "other", _describe(rng, a, "A")), f" in the {_position(a, size)} ."]
        caps.append(format_caption(seg))
    return caps


def make_scene(rng, size, n_captions, first_chain, caption_rng=None):
    """One image: (PIL image, objects, captions, scene chain, background name).
    caption_rng None: the template captions; else the diverse ones, drawn from it."""
    n = int(rng.integers(2, 6))
    boxes = None
    while boxes is None:
        boxes = _place(rng, size, n)
    bg_name, img = _background(rng, size)
    combos = rng.permutation(len(COLOURS) * len(SHAPES))[:n]  # unique (colour, shape)
    objects = []
    for k, (box, c) in enumerate(zip(boxes, combos)):
        side = (box[2] - box[0]) / size
        objects.append({"chain": first_chain + k, "box": box,
                        "colour": list(COLOURS)[c // len(SHAPES)], "shape": SHAPES[c % len(SHAPES)],
                        "texture": TEXTURES[rng.integers(len(TEXTURES))],
                        "size": "small" if side < 0.26 else "large"})
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 6)):  # clutter under the objects: lines and dots
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.integers(0, size, 2)
        if rng.random() < 0.5:
            draw.line([int(x), int(y), *[int(v) for v in rng.integers(0, size, 2)]], fill=col, width=1)
        else:
            r = int(rng.integers(1, 3))
            draw.ellipse([int(x) - r, int(y) - r, int(x) + r, int(y) + r], fill=col)
    for o in objects:
        img = draw_object(img, o)
    scene_chain = first_chain + n
    # always drawn: the template captions advance the scene stream that the next image reads
    caps = make_captions(rng, objects, bg_name, size, n_captions, scene_chain)
    if caption_rng is not None:
        caps = diverse_captions(caption_rng, objects, bg_name, size, n_captions, scene_chain)
    return img, objects, caps, scene_chain, bg_name


def generate(root, num_train, num_val, num_test, image_size=128, captions_per_image=3, seed=0,
             captions="template"):
    """Write a dataset in the Flickr30k Entities layout under root (and its
    scenes' objects in SCENE_OBJECTS); returns seconds taken."""
    if captions not in CAPTION_GRAMMARS:
        raise ValueError(f"data.captions must be one of {CAPTION_GRAMMARS}, got {captions!r}")
    t0 = time.time()
    scenes = {}
    for d in ("flickr30k-images", "Sentences", "Annotations"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    chain = 1  # chain 0 is reserved for "not visual"
    for split_id, (split, count) in enumerate(zip(SPLITS, (num_train, num_val, num_test))):
        rng = np.random.default_rng([seed, split_id])  # each split its own stream and ids
        ids = []
        for k in range(count):
            image_id = f"{split_id}{k:07d}"
            cap_rng = (np.random.default_rng([seed, split_id, k, CAPTION_SALT])
                       if captions == "diverse" else None)
            img, objects, caps, scene_chain, bg_name = make_scene(rng, image_size, captions_per_image, chain,
                                                                  cap_rng)
            chain = scene_chain + 1
            scenes[image_id] = {"split": split, "width": image_size, "height": image_size,
                                "background": bg_name, "scene_chain": scene_chain, "objects": objects}
            img.save(os.path.join(root, "flickr30k-images", f"{image_id}.jpg"), quality=95)
            with open(os.path.join(root, "Sentences", f"{image_id}.txt"), "w") as f:
                f.write("\n".join(caps) + "\n")
            write_annotation(os.path.join(root, "Annotations", f"{image_id}.xml"), f"{image_id}.jpg",
                             image_size, image_size, [(o["chain"], o["box"]) for o in objects],
                             scene_chains=[scene_chain])
            ids.append(image_id)
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    with open(os.path.join(root, SCENE_OBJECTS), "w") as f:
        json.dump(scenes, f)
    return time.time() - t0
