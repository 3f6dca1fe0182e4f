"""benchmarks/heldout_parts.py: each diagnostic row changes exactly the part it names."""
import itertools
import re

import numpy as np

from benchmarks.heldout_parts import grounding_variants, patched, radar_grammars, sclap_variants
from data.grounding import captions as g_train
from data.grounding import heldout as g_held
from data.radar.caption_grammar import make
from data.radar.heldout import HELDOUT, clip_rng
from data.sclap import heldout as s_held

SCENE = {"background": "teal", "scene_chain": "9", "width": 128, "height": 128,
         "objects": [{"chain": "1", "box": [5, 5, 40, 40], "colour": "blue", "shape": "star", "size": "small",
                      "texture": "striped"},
                     {"chain": "2", "box": [80, 70, 120, 120], "colour": "red", "shape": "circle", "size": "large",
                      "texture": "hollow"},
                     {"chain": "3", "box": [70, 5, 110, 40], "colour": "yellow", "shape": "cross", "size": "small",
                      "texture": "solid"}]}


def test_grounding_rows_swap_one_wording_kind_and_keep_every_draw():
    variants = grounding_variants()
    held = [g_held.heldout_captions(f"img{k}", SCENE, n=6) for k in range(20)]
    with patched(g_held, variants["colour in training words"]):
        swapped = [g_held.heldout_captions(f"img{k}", SCENE, n=6) for k in range(20)]
    assert g_held.COLOURS["blue"] == "cobalt"          # restored on leaving the block
    new = {g_held.COLOURS[c]: g_train.COLOUR_WORDS[c][0] for c in g_held.COLOURS}
    for a, b in zip(itertools.chain(*held), itertools.chain(*swapped)):
        # the same caption, word for word, except each held-out colour by its training wording
        assert re.sub("|".join(rf"\b{w}\b" for w in new), lambda m: new[m.group(0)], a) == b
    assert any("cobalt" in c for c in itertools.chain(*held))
    every = variants["every entity word in training words"]
    assert set(every) == {"COLOURS", "SHAPES", "SIZES", "TEXTURES"}


def test_radar_mixtures_render_every_action_with_the_parts_they_name():
    actions = [{"name": "walk", "params": {"speed": 1.0, "direction": "left"}}, {"name": "jump", "params": {"reps": 2}},
               {"name": "turn around", "params": {"direction": "right"}}, {"name": "sit down", "params": {}},
               {"name": "wave", "params": {"reps": 3, "arm": "left"}}]
    grammars = radar_grammars()
    mixed = grammars["held-out frames, training words"]
    assert mixed.frames is HELDOUT.frames and mixed.phrases is not HELDOUT.phrases
    assert grammars["training frames, held-out words"].phrases is HELDOUT.phrases
    for name, grammar in grammars.items():
        for pair in itertools.permutations(actions, 2):
            caps, swapped = make(grammar, list(pair), clip_rng("c1"), 3, 20)
            assert len(caps) == len(swapped) == 3 and all(c != s for c, s in zip(caps, swapped)), name
    # the benchmark swaps the grammar that eval's heldout_captions reads, with its per-clip stream
    from data.radar import heldout
    from data.radar.text import clean_caption
    with patched(heldout, {"HELDOUT": mixed}):
        caps, swapped = heldout.heldout_captions(actions[:2], "c7")
    assert heldout.HELDOUT is HELDOUT
    want = make(mixed, actions[:2], clip_rng("c7"), heldout.NUM_CAPTIONS, heldout.MAX_WORDS)
    assert (caps, swapped) == tuple([clean_caption(c) for c in w] for w in want)
    # a held-out frame's connector with a training verb: "prior to jumping, a man walks ..."
    caps = [c for k in range(40) for c in make(mixed, actions[:2], np.random.default_rng(k), 3, 20)[0]]
    assert any("prior to" in c or "in the wake of" in c or "beforehand" in c for c in caps)
    assert not any(re.search(r"\btreads?\b|\bspring", c) for c in caps)


def test_sclap_rows_keep_the_held_out_shape_and_swap_their_part():
    rows = {"pos": {"event1_class": "dog", "event2_class": "bell", "event1_azimuth": 0.0, "event2_azimuth": 90.0},
            "neg_t": {"event1_class": "bell", "event2_class": "dog", "event1_azimuth": 90.0, "event2_azimuth": 0.0},
            "neg_s": {"event1_class": "dog", "event2_class": "bell", "event1_azimuth": 180.0,
                      "event2_azimuth": 270.0}}
    for name, tables in sclap_variants().items():
        with patched(s_held, tables):
            for k in range(30):
                caps = s_held.item_captions(f"item{k}", rows)
                assert len(set(caps.values())) == 3, (name, caps)
        if "SOUNDS" in tables:
            assert set(tables["SOUNDS"]) == set(s_held.SOUNDS)
            for name_, d in tables["SOUNDS"].items():
                assert [len(d[k]) for k in ("clauses", "nominals")] == \
                       [len(s_held.SOUNDS[name_][k]) for k in ("clauses", "nominals")]
    assert s_held.FRAMES[0] == "{A}; subsequently {B}"   # restored
