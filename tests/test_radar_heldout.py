"""The radar held-out grammar (data/radar/heldout.py) against the training
grammars (diverse and template), checked over their full inventories; the
time order of order-swapped captions read back from the frame definitions;
evaluation's heldout_ keys equal to a hand computation."""
import re
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.radar import captions as diverse
from data.radar import heldout, text
from data.radar.actions import ACTION_NAMES, sample_clip
from data.radar.caption_grammar import (SLOT, VERB, action_facts, conjugate, expand_phrases, fact_space,
                                        literal_pieces, render, render_phrase, shortest, slot_order)
from data.radar.caption_inventory import TEMPLATE_FRAMES, every_phrase, inventory, permutations, time_orders
from data.radar.heldout import HELDOUT, HELDOUT_ACTION_PROMPTS, heldout_captions
from data.radar.motion import sample_body
from data.radar.temporal import TemporalNegatives
from families.radar.evaluation import evaluate_radar
from losses.radar_loss import RadarContrastiveLoss

TRAINING = ("diverse", "template")


def training_frames():
    return [f for frames in (diverse.FRAMES, TEMPLATE_FRAMES) for n in frames for f in frames[n]]


def heldout_frames():
    return [f for n in HELDOUT.frames for f in HELDOUT.frames[n]]


@pytest.fixture(scope="module")
def corpus():
    """Every piece of text the training grammars can write: all phrases of every
    action (all fills, forms, subjects), the frames' own words, the subjects;
    one string with each piece between spaces, for word-sequence lookups."""
    pieces = set(every_phrase("diverse")) | set(every_phrase("template"))
    pieces |= {p for f in training_frames() for p in literal_pieces(f)}
    pieces |= {s.noun for s in diverse.SUBJECTS} | set(text.SUBJECTS)
    pieces |= set(text.ACTION_PROMPTS.values())
    return "\n" + "\n".join(f" {p} " for p in pieces) + "\n"


def produced(corpus, words):
    """Does a training piece hold this word sequence?"""
    return f" {words} " in corpus


def training_words(corpus):
    return set(re.findall(r"[a-z0-9'-]+", corpus))


def skeleton(frame):
    return re.sub(r"\{\d:[a-z]+\}", "{X}", frame.replace("{P}", "{S}"))


def test_heldout_shares_no_frame_or_connector_with_the_training_grammars():
    train = training_frames()
    assert not {skeleton(f) for f in heldout_frames()} & {skeleton(f) for f in train}
    train_pieces = {p for f in train for p in literal_pieces(f)}
    held_pieces = {p for f in heldout_frames() for p in literal_pieces(f)}
    assert held_pieces and not held_pieces & train_pieces
    for piece in held_pieces:   # nor inside a longer training connector ("and" in "and then")
        assert not any(f" {piece} " in f" {t} " for t in train_pieces), piece
    # many frames, and frames whose surface order is not the time order, in both grammars
    for frames in (diverse.FRAMES, HELDOUT.frames):
        assert sum(slot_order(f) != sorted(slot_order(f)) for n in (2, 3) for f in frames[n]) >= 4
    assert len(diverse.FRAMES[2]) >= 15 and len(diverse.FRAMES[3]) >= 15


def test_heldout_words_for_every_action_and_concept_are_never_produced_in_training(corpus):
    words = training_words(corpus)
    for action in ACTION_NAMES:
        for facts in fact_space(action):
            phrases = {render_phrase(HELDOUT, p, form, HELDOUT.subjects[0])
                       for p in expand_phrases(HELDOUT, facts) for form in ("s", "ing", "base", "en")}
            assert phrases, facts
            assert not [p for p in phrases if produced(corpus, p)], facts
    # the held-out verbs, in every form, are no word of any training caption
    lemmas = {v for entries in HELDOUT.phrases.values() for e in entries
              for v in VERB.findall(e if isinstance(e, str) else e[0])}
    forms = {conjugate(HELDOUT, v, f) for v in lemmas for f in ("s", "ing", "base", "ed", "en")}
    assert not forms & words, sorted(forms & words)
    # directions, speeds, counts, limbs, turn and fall directions: every value the training
    # grammars have a wording for has held-out wordings, none of them a training one
    held, digits = inventory("heldout").fills, {str(n) for n in range(10)}
    for name in TRAINING:
        for concept, values in inventory(name).fills.items():
            for value, train_words in values.items():
                if not any(train_words):
                    continue
                mine = {w for w in held[concept].get(value, set()) if w}
                assert mine, (name, concept, value)
                # (the digit of "4 side-straddles" is the template's "does 4 jumping jacks")
                assert not [w for w in mine if produced(corpus, w) and w not in digits], (concept, value)
    assert not [s.noun for s in HELDOUT.subjects if produced(corpus, s.noun) or s.noun in corpus]


def test_heldout_zero_shot_prompts_use_no_training_wording(corpus):
    words = training_words(corpus)
    assert set(HELDOUT_ACTION_PROMPTS) == set(ACTION_NAMES)
    for action, prompt in HELDOUT_ACTION_PROMPTS.items():
        assert not produced(corpus, prompt) and prompt.split()[2] not in words, (action, prompt)
        assert prompt.split()[2] in {conjugate(HELDOUT, v, "s") for v in
                                     {x for e in HELDOUT.phrases[action] for x in
                                      VERB.findall(e if isinstance(e, str) else e[0])}}


# ------------------------------------------------------------------ time order
BEFORE = ("before", "prior to", "ahead of")
AFTER = ("after", "in the wake of", "once done", "having", "but first")
FIRST = ("first", "at first", "initially", "starts by", "begins by")
LAST = ("finally", "lastly", "ends by", "concludes by", "eventually")


def _keyword_slot(frame, words):
    """(keyword, the slot right after it, the nearest slot before it or None) per use."""
    out = []
    for w in words:
        for m in re.finditer(rf"(?:^|[ ,;.]){re.escape(w)} (?:\{{[SP]\}} )?\{{(\d):", frame):
            slots = [(s.start(), int(s.group(1))) for s in SLOT.finditer(frame)]
            after = int(m.group(1))
            before = [k for at, k in slots if at < m.start()]
            out.append((w, after, before[-1] if before else None, [k for _, k in slots]))
    return out


@pytest.mark.parametrize("frames", [diverse.FRAMES, HELDOUT.frames, TEMPLATE_FRAMES],
                         ids=["diverse", "heldout", "template"])
def test_frames_time_order_follows_their_connectors(frames):
    """The frame definitions' slot numbers agree with what the connectors
    say: "X before Y" / "before Y, X" put Y later, "after X, Y" / "Y after
    X" / "having X" / "but first X" put X earlier, "first X" is action 0,
    "finally X" the last."""
    checked = 0
    for n in (2, 3):
        for f in frames[n]:
            for w, k, prev, surface in _keyword_slot(f, BEFORE + AFTER):
                # sentence-initial: the clause it introduces is compared with the main clause's slot
                other = prev if prev is not None else next(s for s in surface if s != k)
                later = w in BEFORE
                assert (k > other) if later else (k < other), (f, w)
                checked += 1
            for w, k, _, _ in _keyword_slot(f, FIRST):
                assert k == 0, (f, w)
            for w, k, _, _ in _keyword_slot(f, LAST):
                assert k == n - 1, (f, w)
    assert checked >= 3   # the template's three before/after frames at least


def _actions(n):
    return [{"name": "walk", "params": {"direction": "towards", "speed": 0.7}},
            {"name": "clap", "params": {"reps": 3}},
            {"name": "turn around", "params": {"direction": "left"}}][:n]


def test_every_heldout_frame_parses_back_to_its_time_order_and_swaps_it():
    """Each frame with each permutation of the phrases: the parser (frame
    definitions only) reads the permuted time order back."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        acts = _actions(n)
        for frame in HELDOUT.frames[n]:
            phrases = [expand_phrases(HELDOUT, action_facts(a))[0] for a in acts]
            for perm in [tuple(range(n))] + permutations(n):
                subject = HELDOUT.subjects[int(rng.integers(len(HELDOUT.subjects)))]
                cap = render(HELDOUT, frame, subject, [phrases[i] for i in perm])
                assert time_orders("heldout", cap, acts) == {perm}, cap


def _clips(k, seed=5):
    for i in range(k):
        rng = np.random.default_rng([seed, i])
        _, acts = sample_clip(rng, sample_body(rng))
        yield f"{i:06d}", acts


def test_heldout_captions_deterministic_swapped_in_time_and_short():
    seen = {}
    for cid, acts in _clips(30):
        caps, swapped = heldout_captions(acts, cid)
        assert (caps, swapped) == heldout_captions(acts, cid)        # the clip id alone decides
        assert len(caps) == heldout.NUM_CAPTIONS and len(set(caps)) == len(caps)
        assert len(swapped) == (len(caps) if len(acts) > 1 else 0)
        for c in caps:
            assert time_orders("heldout", c, acts) == {tuple(range(len(acts)))}, c
            assert len(c.split()) <= heldout.MAX_WORDS and c == c.lower() and not c.endswith(".")
        for s in swapped:
            (order,) = time_orders("heldout", s, acts)
            assert order != tuple(range(len(acts))), s
        seen[cid] = caps
    assert heldout_captions(_actions(2), "000001") != heldout_captions(_actions(2), "000002")


# heldout_captions(FROZEN_ACTIONS[i], f"00000{i}") when the held-out set was written (commit e75551b):
# the grammar is frozen, so every checkpoint's heldout_ numbers are on these sentences
FROZEN_ACTIONS = [
    [{"name": "walk", "params": {"direction": "towards", "speed": 0.7}},
     {"name": "wave", "params": {"reps": 3, "arm": "left"}}],
    [{"name": "run", "params": {"direction": "left", "speed": 2.5}},
     {"name": "kick", "params": {"reps": 2, "leg": "right"}}, {"name": "fall", "params": {"direction": "backward"}}],
    [{"name": "punch", "params": {"reps": 4, "arm": "both"}}],
]
FROZEN = [
    (["a performer signals with the left-side arm, having sauntered nearer to the antenna beforehand",
      "the participant gestures a greeting using the left-side arm once done proceeding nearer to the antenna "
      "in a relaxed manner",
      "this individual proceeds in the antenna's direction at a gentle tempo and later on signals with the "
      "left-side arm"],
     ["a performer saunters nearer to the antenna, having signalled with the left-side arm beforehand",
      "the participant proceeds nearer to the antenna in a relaxed manner once done gesturing a greeting using "
      "the left-side arm",
      "this individual signals with the left-side arm and later on proceeds in the antenna's direction at a "
      "gentle tempo"]),
    (["initially a young adult bolts leftward across the room, subsequently thrusts the right-side leg ahead, "
      "and eventually keels over rearward",
      "prior to collapsing rearward, the participant charges in the leftward direction and subsequently thrusts "
      "the right-side leg ahead",
      "having charged leftward across the room, the participant swings the right-side leg outward for 2 "
      "repetitions; lastly collapses rearward"],
     ["initially a young adult keels over rearward, subsequently bolts leftward across the room, and eventually "
      "thrusts the right-side leg ahead",
      "prior to thrusting the right-side leg ahead, the participant collapses rearward and subsequently charges "
      "in the leftward direction",
      "having collapsed rearward, the participant swings the right-side leg outward for 2 repetitions; lastly "
      "charges leftward across the room"]),
    (["we see an adult striking out using each arm for 4 repetitions",
      "we see the actor striking out using each arm for 4 repetitions",
      "in this clip an adult strikes out using each arm for 4 repetitions"], []),
]


def test_heldout_captions_are_frozen():
    for i, (acts, want) in enumerate(zip(FROZEN_ACTIONS, FROZEN)):
        assert heldout_captions(acts, f"00000{i}") == want


@pytest.mark.parametrize("grammar", [HELDOUT, diverse.DIVERSE], ids=["heldout", "diverse"])
def test_every_three_action_sequence_has_a_caption_within_max_words(grammar):
    """Exhaustive over the actions' facts: the shortest caption the grammar has
    for the longest-worded three actions fits in 20 words (make never fails)."""
    subject = min(grammar.subjects, key=lambda s: len(s.noun.split()))
    worst = {}
    for a in ACTION_NAMES:
        worst[a] = max(fact_space(a), key=lambda f: min(
            len(render_phrase(grammar, p, "ing", subject).split()) for p in expand_phrases(grammar, f)))
    three = sorted(worst, key=lambda a: min(len(render_phrase(grammar, p, "s", subject).split())
                                            for p in expand_phrases(grammar, worst[a])))[-3:]
    cap, _ = shortest(grammar, [worst[a] for a in three], permutations(3))
    assert len(cap.split()) <= 20, cap


# ------------------------------------------------------------------ evaluation
E = torch.eye(4)
META = {  # clip id -> meta actions; radar feature e_k for clip k
    "A": [{"name": "walk", "params": {"direction": "towards", "speed": 1.2}}, {"name": "jump", "params": {"reps": 2}}],
    "B": [{"name": "sit down", "params": {}}, {"name": "wave", "params": {"reps": 3, "arm": "left"}}],
    "C": [{"name": "clap", "params": {"reps": 4}}],
    "D": [{"name": "fall", "params": {"direction": "forward"}}],
}
NAMES = ["walk", "jump", "sit down", "wave", "clap", "fall"]


def text_feature(caption):
    """An order-aware bag of words: word i adds (1 + i/10) e_{crc32(word) % 4}."""
    f = torch.zeros(4)
    for i, w in enumerate(caption.split()):
        f[zlib.crc32(w.encode()) % 4] += 1 + i / 10
    return f + 0.01


class MetaClips:
    """RadarTextDataset stand-in whose clips have meta actions (held-out set) or not."""

    def __init__(self, with_actions=True, root="constructed-meta"):
        self.ids, self.with_actions, self.root = list(META), with_actions, root
        self.items = [{"captions": [f"{c} clip"], "meta": f"{c}.json", "actions": [a["name"] for a in META[c]]}
                      for c in self.ids]
        self.action_names, self.action_prompts = NAMES, {n: n for n in NAMES}

    def __len__(self):
        return len(self.ids)

    def clip_meta(self, i):
        return {"actions": META[self.ids[i]]} if self.with_actions else {}

    def __getitem__(self, i):
        c = self.ids[i]
        return {"radar_mask": torch.ones(4, dtype=torch.bool), "caption": f"{c} clip", "captions": [f"{c} clip"],
                "clip_id": c, "actions": self.items[i]["actions"],
                "label": NAMES.index(META[c][0]["name"]), "num_actions": len(META[c])}


class HashModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def radar_views(self, batch):
        return {"clip_id": batch["clip_id"]}

    def encode_radar(self, views, mask):
        f = torch.stack([E[list(META).index(c)] for c in views["clip_id"]]) * self.weight
        return {"radar_features": f, "radar_seq": f[:, None], "radar_mask": mask[:, :1]}

    def encode_text(self, captions):
        f = torch.stack([text_feature(c) for c in captions]) * self.weight
        return {"text_features": f, "text_tokens": f[:, None],
                "text_mask": torch.ones(len(captions), 1, dtype=torch.bool)}


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def test_evaluate_reports_heldout_keys_equal_to_a_hand_computation():
    model, criterion = HashModel(), RadarContrastiveLoss(4)
    cfg = {"precision": "fp32", "eval": {"batch_size": 3}}
    m = evaluate_radar(model, criterion, TemporalNegatives(MetaClips()), cfg, torch.device("cpu"))
    ids = list(META)
    held = {c: heldout_captions(META[c], c) for c in ids}
    # t2r R@1: each held-out caption's best clip by cosine
    hits = [max(ids, key=lambda k: cos(E[ids.index(k)], text_feature(t))) == c
            for c in ids for t in held[c][0]]
    assert m["heldout_num_queries"] == len(hits) == 4 * heldout.NUM_CAPTIONS
    assert m["heldout_t2r_R@1"] == pytest.approx(sum(hits) / len(hits))
    # temporal order: true vs swapped held-out caption of the two-action clips
    pairs = [(c, t, s) for c in ("A", "B") for t, s in zip(*held[c])]
    acc = sum(cos(E[ids.index(c)], text_feature(t)) > cos(E[ids.index(c)], text_feature(s))
              for c, t, s in pairs) / len(pairs)
    assert m["heldout_temporal_order_pairs"] == len(pairs) == 2 * heldout.NUM_CAPTIONS
    assert m["heldout_temporal_order_acc"] == pytest.approx(acc)
    # zero-shot on C (clap) and D (fall) with the held-out prompts
    zs = [max(NAMES, key=lambda a: cos(E[ids.index(c)], text_feature(HELDOUT_ACTION_PROMPTS[a]))) == META[c][0]["name"]
          for c in ("C", "D")]
    assert m["heldout_zeroshot_action_acc"] == pytest.approx(sum(zs) / 2) and m["heldout_zeroshot_clips"] == 2
    for k in ("t2r_R@5", "t2r_R@10", "r2t_R@1", "r2t_R@5", "r2t_R@10"):
        assert f"heldout_{k}" in m and k in m
    assert 0 <= m["heldout_temporal_order_acc_global"] <= 1
    # the generator-caption keys are those of before (one caption a clip here)
    assert m["num_queries"] == 4 and m["temporal_order_pairs"] == 0


def test_no_meta_actions_no_heldout_keys_said_once(capsys):
    model, criterion = HashModel(), RadarContrastiveLoss(4)
    cfg = {"precision": "fp32", "eval": {"batch_size": 4}}
    data = TemporalNegatives(MetaClips(with_actions=False, root="real-data-without-meta"))
    for _ in range(2):
        m = evaluate_radar(model, criterion, data, cfg, torch.device("cpu"))
        assert not [k for k in m if k.startswith("heldout_")] and "t2r_R@1" in m
    assert capsys.readouterr().out.count("real-data-without-meta: no clip has meta actions") == 1
