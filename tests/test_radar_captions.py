"""The radar training captions (data.captions): template bit-identical to
the captions before issue 13, the diverse grammar's variety and time order,
and the data they give (the same clips under either grammar; a config
without the key builds the data of before)."""
import json
import os
import re

import numpy as np
import pytest

import families.radar as fam
from data.cache import read_marker
from data.radar import text
from data.radar.actions import ACTION_NAMES, sample_clip
from data.radar.caption_grammar import action_facts, expand_phrases, fact_space, render, slot_order
from data.radar.caption_inventory import TEMPLATE_FRAMES, inventory, permutations, time_orders
from data.radar.captions import DIVERSE, clip_captions, make_diverse_captions
from data.radar.humanml3d_export import sim_motion
from data.radar.motion import sample_body
from data.radar.sim import ensure_radar_dataset, generator_params
from tests.radar_tiny import tiny_cfg

# text.make_captions(ACTIONS[i], default_rng([3, i])) as the code of commit 3fd75df wrote them
# (produced by running that commit's data/radar/text.py: `git show 3fd75df:data/radar/text.py`)
ACTIONS = [
    [{"name": "walk", "params": {"direction": "towards", "speed": 0.7}},
     {"name": "wave", "params": {"reps": 3, "arm": "left"}}],
    [{"name": "run", "params": {"direction": "left", "speed": 2.5}},
     {"name": "kick", "params": {"reps": 2, "leg": "right"}}, {"name": "fall", "params": {"direction": "backward"}}],
    [{"name": "punch", "params": {"reps": 4, "arm": "both"}}],
    [{"name": "turn around", "params": {"direction": "right"}}, {"name": "jumping jacks", "params": {"reps": 3}}],
]
OLD = [
    (["the person walks slowly towards the radar, then raises the left hand and waves.",
      "a human walks slowly towards the radar before waving the left hand three times.",
      "a woman walks slowly towards the radar and after that raises the left hand and waves.",
      "a person walks slowly toward the sensor, then waves the left hand three times."],
     ["the person raises the left hand and waves, then walks slowly towards the radar.",
      "a human waves the left hand three times before walking slowly towards the radar.",
      "a woman raises the left hand and waves and after that walks slowly towards the radar.",
      "a person waves the left hand three times, then walks slowly toward the sensor."]),
    (["first a human jogs fast sideways to the left, then kicks twice with the right foot, and finally falls "
      "backwards.",
      "a human runs fast leftwards, after that kicks with the right leg twice and then falls down backwards.",
      "after jogging sideways to the left, someone kicks twice with the right foot and then falls backwards.",
      "someone jogs fast leftwards, after that kicks with the right leg twice and then falls backwards."],
     ["first a human kicks twice with the right foot, then falls backwards, and finally jogs fast sideways to "
      "the left.",
      "a human kicks with the right leg twice, after that falls down backwards and then runs fast leftwards.",
      "after kicking twice with the right foot, someone falls backwards and then jogs sideways to the left.",
      "someone falls backwards, after that jogs fast leftwards and then kicks with the right leg twice."]),
    (["a human throws punches with both fists.", "the person punches forward four times.",
      "a person throws punches with both fists.", "a person punches with both fists."], []),
    (["someone turns around to the right, then does jumping jacks.",
      "after turning around to the right, a woman does jumping jacks.",
      "after turning around, someone does 3 jumping jacks.",
      "a woman turns around and after that does jumping jacks."],
     ["someone does jumping jacks, then turns around to the right.",
      "after doing jumping jacks, a woman turns around to the right.",
      "after doing 3 jumping jacks, someone turns around.",
      "a woman does jumping jacks and after that turns around."]),
]


def test_template_captions_are_bit_identical_to_before_issue_13():
    for i, (acts, old) in enumerate(zip(ACTIONS, OLD)):
        assert text.make_captions(acts, np.random.default_rng([3, i])) == old
        # the generator's call site: template draws from the simulator's stream, as before
        params = {"captions": "template", "num_captions": 4, "max_words": 20, "seed": 9}
        assert clip_captions(acts, params, i, np.random.default_rng([3, i])) == old
        assert clip_captions(acts, {k: v for k, v in params.items() if k != "captions"}, i,
                             np.random.default_rng([3, i])) == old        # key missing: template


def test_template_frames_are_text_join_and_its_swaps_swap_time():
    parts = [("walks", "walking"), ("claps", "clapping"), ("sits down", "sitting down")]
    for n in (1, 2, 3):
        for style, frame in enumerate(TEMPLATE_FRAMES[n]):
            want = re.sub(r"\{(\d):(s|ing)\}", lambda m: parts[int(m.group(1))][m.group(2) == "ing"],
                          frame.replace("{S}", "a man"))
            assert text._join("a man", parts[:n], style) == want
    for acts, (caps, swapped) in zip(ACTIONS, OLD):
        for c in caps:
            assert time_orders("template", c, acts) == {tuple(range(len(acts)))}, c
        for s in swapped:
            (order,) = time_orders("template", s, acts)
            assert order != tuple(range(len(acts))), s


def _clips(k, seed=11):
    for i in range(k):
        rng = np.random.default_rng([seed, i])
        _, acts = sample_clip(rng, sample_body(rng))
        yield i, acts


def test_diverse_captions_state_the_time_order_and_swaps_reverse_it():
    """Sampled clips: every caption parses back (frame definitions only) to the
    clip's time order, every swapped caption to another order; within 20
    words, distinct, index-aligned."""
    for i, acts in _clips(25):
        caps, swapped = make_diverse_captions(acts, np.random.default_rng([0, i, 13]), num=6)
        assert len(caps) == 6 == len(set(caps)) and len(swapped) == (6 if len(acts) > 1 else 0)
        for c in caps:
            assert len(c.split()) <= 20 and c == c.lower() and c.endswith(".")
            assert time_orders("diverse", c, acts) == {tuple(range(len(acts)))}, c
        for s in swapped:
            (order,) = time_orders("diverse", s, acts)
            assert order != tuple(range(len(acts))), s


def test_every_diverse_frame_parses_back_to_each_permutation():
    acts = [{"name": "jump", "params": {"reps": 2}}, {"name": "walk", "params": {"direction": "left", "speed": 1.6}},
            {"name": "sit down", "params": {}}]
    rng = np.random.default_rng(1)
    for n in (1, 2, 3):
        phrases = [expand_phrases(DIVERSE, action_facts(a))[0] for a in acts[:n]]
        for frame in DIVERSE.frames[n]:
            for perm in [tuple(range(n))] + permutations(n):
                subject = DIVERSE.subjects[int(rng.integers(len(DIVERSE.subjects)))]
                cap = render(DIVERSE, frame, subject, [phrases[i] for i in perm])
                assert time_orders("diverse", cap, acts[:n]) == {perm}, cap


def test_diverse_grammar_is_richer_than_the_template_everywhere():
    frames = [f for n in (2, 3) for f in DIVERSE.frames[n]]
    skel = {re.sub(r"\{\d:[a-z]+\}", "X", f).replace("{S}", "S").replace("{P}", "P") for f in frames}
    # the reversed-surface frames the issue names, and the "at first ... finally" one
    for want in ("before X, S X", "S X after X", "S X, but first P X", "after X, S X", "at first S X, and finally P X"):
        assert want in skel, want
    assert sum(slot_order(f) != sorted(slot_order(f)) for f in frames) >= 8
    assert len({s.noun for s in DIVERSE.subjects}) >= 2 * len(set(text.SUBJECTS))
    div, tpl = inventory("diverse"), inventory("template")
    for concept, values in tpl.fills.items():       # more wordings for every direction, speed, count, limb
        for value, words in values.items():
            assert len(div.fills[concept][value]) > len(words), (concept, value)
    for action in ACTION_NAMES:                     # more phrasings of every action
        for facts in fact_space(action)[:3]:
            assert len(div.phrases(facts, "s")) >= 2 * len(tpl.phrases(facts, "s")), facts


# ------------------------------------------------------------------ the data
def test_data_captions_changes_the_captions_not_the_clips(tmp_path):
    a = ensure_radar_dataset(str(tmp_path / "template"), 2, 1, 1, seed=2)
    b = ensure_radar_dataset(str(tmp_path / "diverse"), 2, 1, 1, seed=2, captions="diverse", num_captions=5)
    assert "captions" not in read_marker(a)["params"] and read_marker(b)["params"]["captions"] == "diverse"
    p = generator_params(2, 1, 1, seed=2, captions="diverse", num_captions=5)
    for cid in ("000000", "000001", "000002", "000003"):
        for sub in (f"mmwave/{cid}.npz",):
            assert open(os.path.join(a, sub), "rb").read() == open(os.path.join(b, sub), "rb").read()
        meta_a, meta_b = (json.load(open(os.path.join(r, "meta", f"{cid}.json"))) for r in (a, b))
        assert meta_a["actions"] == meta_b["actions"] and len(meta_b["captions"]) == 5
        assert meta_a["captions"] != meta_b["captions"]
        for c in meta_b["captions"]:
            assert time_orders("diverse", c, meta_b["actions"]) == {tuple(range(len(meta_b["actions"])))}
        # the HumanML3D export writes the same diverse captions for the same clip
        _, _, caps, swapped = sim_motion(int(cid), p)
        assert [text.clean_caption(c) for c in caps] == meta_b["captions"]
        assert [text.clean_caption(s) for s in swapped] == meta_b["order_swapped_captions"]
    with pytest.raises(ValueError, match=r"captions='fancy'; expected one of \['diverse', 'template'\]"):
        generator_params(1, 1, 1, captions="fancy")


def test_a_config_from_before_issue_13_builds_the_template_data(tmp_path):
    cfg = tiny_cfg(tmp_path / "data")
    assert cfg["data"]["captions"] == "diverse" and cfg["data"]["num_captions"] == 6   # the YAML's
    del cfg["data"]["captions"], cfg["data"]["num_captions"]                            # an old checkpoint's
    fam.prepare_data(cfg)
    params = read_marker(str(tmp_path / "data"))["params"]
    assert "captions" not in params and params["num_captions"] == 4
    meta = json.load(open(tmp_path / "data" / "meta" / "000000.json"))
    assert all(time_orders("template", c + ".", meta["actions"]) for c in meta["captions"])
