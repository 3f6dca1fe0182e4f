"""The grounding training grammars (issue 13): `template` reproduces the
captions and images of before the issue; `diverse` keeps the images, and every
phrase it writes refers to exactly its own box, with relations and positions
that are true of the boxes (parsed back through each frame's definition)."""
import hashlib
import os
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from data.grounding import captions as cg
from data.grounding.format import parse_caption
from data.grounding.generate import COLOURS, SHAPES, TEXTURES, _place, generate, make_scene
from data.grounding.heldout import heldout_captions
from data.grounding.spans import swap_left_right
from models.text_encoder import resolve_model_path
from training.config import load_config

# Written by the code of commit 3fd75df (git show 3fd75df:data/grounding/generate.py):
# make_scene(default_rng([7, 0]), 64, 3, chain) for 4 scenes, and the sha256 of their pixels
OLD_CAPTIONS = [
    '[/EN#5/other The black striped circle] is to the right of [/EN#1/other the orange circle] .',
    'There is [/EN#3/other a green circle] and [/EN#1/other a large orange circle] on [/EN#6/scene a brown background] .',
    '[/EN#5/other The black striped circle] is below [/EN#4/other the yellow striped square] .',
    '[/EN#9/other The large purple striped triangle] is to the left of [/EN#7/other the large yellow striped star] .',
    'There is [/EN#7/other a large yellow striped star] , [/EN#9/other a large purple striped triangle] and '
    '[/EN#8/other a small black diamond] on [/EN#10/scene a brown background] .',
    '[/EN#8/other The small black striped diamond] is above [/EN#9/other the large purple triangle] .',
    '[/EN#11/other The large white circle] is to the right of [/EN#13/other the green diamond] .',
    'There is [/EN#13/other a small green diamond] , [/EN#11/other a large white circle] and '
    '[/EN#12/other a small black hollow triangle] on [/EN#14/scene a gray background] .',
    '[/EN#11/other A large white circle] in the right .',
    '[/EN#18/other The blue striped star] is above [/EN#16/other the yellow hollow cross] .',
    '[/EN#18/other The small blue star] is above [/EN#16/other the yellow hollow cross] .',
    'There is [/EN#15/other a large orange striped cross] , [/EN#18/other a small blue striped star] and '
    '[/EN#16/other a large yellow cross] on [/EN#19/scene a beige background] .',
]
OLD_PIXELS = "8cc969293437740a553da0b1cfcc57113aaab68aa603b79a691dff074ad5c186"
# generate(root, 6, 2, 2, image_size=64, captions_per_image=2, seed=5) at 3fd75df: Sentences/,
# Annotations/ and the split files (file names and bytes), hashed as _digest does
OLD_FOLDER = "53e4c2b13e4cbbecd78f0b68201f048fb5813433674c48e861318cfc6d8dc5c6"


def _scenes(seed, n, caption_rng):
    rng, chain, out = np.random.default_rng([seed, 0]), 1, []
    for k in range(n):
        img, objects, caps, scene_chain, bg = make_scene(rng, 64, 3, chain, caption_rng(k))
        chain = scene_chain + 1
        out.append((np.asarray(img), objects, caps))
    return out


def _digest(root):
    h = hashlib.sha256()
    for sub in ("Sentences", "Annotations"):
        for f in sorted(os.listdir(os.path.join(root, sub))):
            h.update(f.encode())
            h.update(open(os.path.join(root, sub, f), "rb").read())
    for split in ("train", "val", "test"):
        h.update(open(os.path.join(root, f"{split}.txt"), "rb").read())
    return h.hexdigest()


def test_template_is_the_old_generator_and_diverse_keeps_its_images(tmp_path):
    template = _scenes(7, 4, lambda k: None)
    diverse = _scenes(7, 4, lambda k: np.random.default_rng([7, 0, k, 13]))
    assert [c for _, _, caps in template for c in caps] == OLD_CAPTIONS
    h = hashlib.sha256()
    for (px, _, _), (px_d, _, caps_d) in zip(template, diverse):
        h.update(px.tobytes())
        assert (px == px_d).all()
    assert h.hexdigest() == OLD_PIXELS
    assert not set(c for _, _, caps in diverse for c in caps) & set(OLD_CAPTIONS)
    # the whole folder: template = the old files; diverse: the same images and boxes
    generate(str(tmp_path / "t"), 6, 2, 2, image_size=64, captions_per_image=2, seed=5)
    generate(str(tmp_path / "d"), 6, 2, 2, image_size=64, captions_per_image=2, seed=5, captions="diverse")
    assert _digest(str(tmp_path / "t")) == OLD_FOLDER
    for sub in ("flickr30k-images", "Annotations"):
        for f in os.listdir(tmp_path / "t" / sub):
            assert (tmp_path / "t" / sub / f).read_bytes() == (tmp_path / "d" / sub / f).read_bytes(), f
    assert (tmp_path / "t" / "scene_objects.json").read_bytes() == (tmp_path / "d" / "scene_objects.json").read_bytes()
    with pytest.raises(ValueError, match=r"data.captions must be one of .*'fancy'"):
        generate(str(tmp_path / "x"), 1, 1, 1, captions="fancy")


def _random_scene(rng, size=128):
    """Objects as the generator makes them (unique colour+shape), without drawing the image."""
    n = int(rng.integers(2, 6))
    boxes = None
    while boxes is None:
        boxes = _place(rng, size, n)
    combos = rng.permutation(len(COLOURS) * len(SHAPES))[:n]
    objects = [{"chain": 1 + k, "box": b, "colour": list(COLOURS)[c // len(SHAPES)], "shape": SHAPES[c % len(SHAPES)],
                "texture": TEXTURES[rng.integers(3)], "size": "small" if (b[2] - b[0]) / size < 0.26 else "large"}
               for k, (b, c) in enumerate(zip(boxes, combos))]
    return objects, list(cg.BACKGROUND_WORDS)[rng.integers(4)], 1 + n


def _lexicon():
    """wording -> (attribute, value) over the whole inventory, longest wordings first."""
    lex = {}
    for attr in ("colour", "shape", "size", "texture"):
        for value, wordings in cg.TRAINING_INVENTORY[attr].items():
            for w in wordings:
                assert lex.setdefault(w, (attr, value)) == (attr, value), f"{w!r} names two values"
    for w in cg.NO_SHAPE_WORDS:
        lex[w] = None
    return sorted(lex.items(), key=lambda kv: -len(kv[0]))


def parse_phrase(text, lex):
    """An entity phrase's attributes, e.g. {'colour': 'red', 'shape': 'star'}."""
    rest, found = text.split(" ", 1)[1], {}
    assert text.split(" ")[0] in ("a", "an", "the"), text
    while rest:
        for w, av in lex:
            if rest == w or rest.startswith(w + " "):
                if av:
                    assert av[0] not in found, text
                    found[av[0]] = av[1]
                rest = rest[len(w):].lstrip()
                break
        else:
            raise AssertionError(f"{text!r}: {rest!r} is no wording of the inventory")
    return found


def _frame_regex(frame, ending):
    """A frame as a regex over its marked-up line: entity slots capture the chain, {R} and {P*}
    the wording (checked against the geometry by the caller)."""
    out, i = "", 0
    for m in cg.SLOT.finditer(frame):
        out += re.escape(frame[i:m.start()])
        kind, name = m.groups()
        if kind and name != "G":
            out += rf"\[/EN#(?P<{name}>\d+)/other [^\]]+\]"
        elif name == "G":
            out += r"\[/EN#\d+/scene [^\]]+\]"
        elif name == "L":
            out += r"(?:\[/EN#\d+/other [^\]]+\](?: and | as well as | , and | , )?)+"
        else:   # any wording of any relation / position: the caller checks it is the right one
            pool = cg.TRAINING_INVENTORY["relation"].values() if name == "R" else [cg.TRAINING_INVENTORY["position"]]
            alts = sorted({w for ws in pool for w in ws}, key=len, reverse=True)
            out += rf"(?P<{name}>{'|'.join(map(re.escape, alts))})"
        i = m.end()
    return re.compile(out + re.escape(frame[i:]) + re.escape(ending))


def test_diverse_phrases_name_their_own_box_alone_and_relations_are_true():
    rng = np.random.default_rng(0)
    lex = _lexicon()
    frames = [(f, _frame_regex(f, e)) for fs in cg.FRAMES.values() for f in fs for e in cg.ENDINGS]
    used = set()
    for _ in range(400):
        objects, bg, scene_chain = _random_scene(rng)
        by_chain = {o["chain"]: o for o in objects}
        for line in cg.diverse_captions(rng, objects, bg, 128, 3, scene_chain):
            cap = parse_caption(line)
            for p in cap.phrases:
                if p.chain == scene_chain:
                    assert p.types == ["scene"] and p.text.split()[-1] in cg.BACKGROUND_NOUNS
                    continue
                attrs = parse_phrase(p.text, lex)
                assert "colour" in attrs or "shape" in attrs, p.text
                matches = [o for o in objects if all(o[k] == v for k, v in attrs.items())]
                assert matches == [by_chain[p.chain]], (p.text, objects)
            hits = [(f, m) for f, rx in frames if (m := rx.fullmatch(line))]
            assert hits, line
            for f, m in hits:
                used.add(f)
                g = m.groupdict()
                if g.get("R"):
                    key = cg.relation_key(by_chain[int(g["A"])], by_chain[int(g["B"])])
                    assert g["R"] in cg.RELATION_WORDS[key], (line, f)
                for slot, obj in (("P", "A"), ("P2", "B"), ("P3", "C")):
                    if g.get(slot):
                        where = cg.position_key(by_chain[int(g[obj])], 128)
                        assert g[slot] in cg.position_words(*where), (line, f)
    assert used == {f for fs in cg.FRAMES.values() for f in fs}   # every frame was written and checked
    assert len(used) >= 15


def test_every_training_word_is_in_the_inventory():
    """The held-out checks read the inventory: it must hold every word both grammars write."""
    vocab = cg.inventory_words(cg.TRAINING_INVENTORY)
    rng = np.random.default_rng(1)
    for k in range(300):
        objects, bg, scene_chain = _random_scene(rng)
        caps = cg.diverse_captions(rng, objects, bg, 128, 3, scene_chain)
        for line in caps:
            assert set(cg.words(parse_caption(line).text)) <= vocab, line
    for _, _, caps in _scenes(3, 20, lambda k: None):   # the template's captions
        for line in caps:
            assert set(cg.words(parse_caption(line).text)) <= vocab, line


def test_flips_keep_diverse_captions_true():
    """Only horizontal wordings hold 'left'/'right', and swapping them gives the mirrored
    wording (the horizontal flip's caption rewrite), over the whole inventory."""
    lr = re.compile(r"\b(left|right)\b")
    inv = cg.TRAINING_INVENTORY
    for attr in ("colour", "shape", "size", "texture", "background"):
        for wordings in inv[attr].values():
            assert not any(lr.search(w) for w in wordings)
    assert not any(lr.search(w) for w in inv["frames"] + inv["connectors"] + inv["other"])
    mirror = {"left": "right", "right": "left", "above": "above", "below": "below"}
    for key, wordings in cg.RELATION_WORDS.items():
        for w in wordings:
            assert bool(lr.search(w)) == (key in ("left", "right")), w
            flipped = swap_left_right(parse_caption(f"[/EN#1/other a box] is {w} [/EN#2/other a star]")).text
            assert flipped.split(" is ", 1)[1].rsplit(" a star", 1)[0] in cg.RELATION_WORDS[mirror[key]]
    for v in ("top", "bottom", ""):
        for h, other in (("left", "right"), ("right", "left"), ("", "")):
            for w in cg.position_words(v, h):
                assert bool(lr.search(w)) == bool(h), w
                assert lr.sub(lambda m: mirror[m.group(0)], w) in cg.position_words(v, other)


def test_captions_fit_the_text_length_of_the_config():
    """No phrase of either grammar is truncated away at the YAML's model.text.max_length
    (a truncated phrase counts as a miss in entity_object_acc)."""
    limit = load_config(["--family", "grounding"])["model"]["text"]["max_length"]
    tok = AutoTokenizer.from_pretrained(resolve_model_path(None), use_fast=True)
    rng, texts = np.random.default_rng(2), []
    for k in range(300):
        objects, bg, scene_chain = _random_scene(rng)
        scene = {"background": bg, "scene_chain": scene_chain, "width": 128, "height": 128, "objects": objects}
        lines = cg.diverse_captions(rng, objects, bg, 128, 3, scene_chain) + heldout_captions(str(k), scene)
        texts += [parse_caption(ln).text for ln in lines]
    longest = max(len(ids) for ids in tok(texts)["input_ids"])
    assert longest <= limit, longest
