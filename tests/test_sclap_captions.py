"""sCLAP training captions (issue 13): `template` is the pre-issue grammar to
the byte (checked against the old generate.py run from git), the audio is the
same under `diverse`, and diverse neg_t / neg_s captions describe the swapped
time order / the changed directions in every frame, reversed-surface ones too."""
import copy
import csv
import hashlib
import importlib.util
import os
import re
import subprocess

import numpy as np
import pytest

import families.sclap as fam
from data.sclap import captions as C
from data.sclap.generate import MANIFEST, generate, make_item
from data.sclap.manifest import read_split
from training.config import REPO_ROOT, load_config

OLD_COMMIT = "3fd75df"   # the last commit before issue 13
GEN = dict(num_train=2, num_val=1, num_test=2, num_zeroshot=2, gen_seed=3, sample_rate=8000,
           clip_seconds=4.0, event_seconds=[0.6, 1.0], max_elevation=45.0, max_order=1, snr_db=[20, 30])


@pytest.fixture(scope="module")
def old_generate(tmp_path_factory):
    """data/sclap/generate.py as it was at OLD_COMMIT, imported from a file."""
    return _old_module("old_sclap_generate", "data/sclap/generate.py", tmp_path_factory.mktemp("old"))


def _digests(root):
    return {f: hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(root))}


def test_template_is_the_old_grammar_to_the_byte(old_generate, tmp_path):
    # the old code is the reference: every row (captions included) and every WAV byte
    for name, extra in (("missing", {}), ("template", {"captions": "template"})):
        old_dir, new_dir = tmp_path / f"old_{name}", tmp_path / f"new_{name}"
        for d in (old_dir, new_dir):
            for s in ("train", "test"):
                os.makedirs(d / s)
        for split, index in (("train", 0), ("train", 1), ("test", 0), ("test", 2)):  # test 2: single
            old = old_generate.make_item(split, index, dict(GEN, dir=str(old_dir)))
            new = make_item(split, index, dict(GEN, dir=str(new_dir), **extra))
            assert new == old, (name, split, index)
        for s in ("train", "test"):
            assert _digests(new_dir / s) == _digests(old_dir / s)


def test_diverse_changes_the_captions_not_the_audio(tmp_path):
    generate(dict(GEN, dir=str(tmp_path / "t"), captions="template"))
    generate(dict(GEN, dir=str(tmp_path / "d"), captions="diverse"))
    for s in ("train", "val", "test"):
        assert _digests(tmp_path / "d" / s) == _digests(tmp_path / "t" / s)
    with open(tmp_path / "t" / MANIFEST) as f:
        t_rows = list(csv.DictReader(f))
    with open(tmp_path / "d" / MANIFEST) as f:
        d_rows = list(csv.DictReader(f))
    keep = ("split", "item_id", "variant", "file_name") + tuple(k for k in t_rows[0] if k.startswith("event"))
    assert [{k: r[k] for k in keep} for r in d_rows] == [{k: r[k] for k in keep} for r in t_rows]
    assert all(d["caption"] != t["caption"] for d, t in zip(d_rows, t_rows))
    # five captions a triplet clip, each variant's caption k in one frame; singles have one
    items, singles = read_split(str(tmp_path / "d"), "train")
    for it in items:
        for v in it.values():
            assert len(v["captions"]) == len(v["plain_captions"]) == C.CAPTIONS_PER_ITEM
        assert it["pos"]["plain_captions"] == it["neg_s"]["plain_captions"]   # same events, same order
    _, singles = read_split(str(tmp_path / "d"), "test")
    assert len(singles) == 2 and all(len(r["captions"]) == 1 for r in singles)
    with pytest.raises(ValueError, match="data.captions must be one of template, diverse"):
        make_item("train", 0, dict(GEN, dir=str(tmp_path / "x"), captions="rich"))


def frame_regex(frame):
    """The frame's literal text with a named group for each slot."""
    parts = re.split(r"(\{[ABab]\})", frame)
    return re.compile("".join(f"(?P<{p[1]}>.+)" if C.SLOT.fullmatch(p) else re.escape(p) for p in parts))


def parse_event(text, names):
    """Every (class, sector) whose wording + direction phrase is exactly `text`."""
    out = set()
    for name in names:
        for w in C.clauses(name) + C.SOUNDS[name]["nominals"]:
            if text.startswith(w + " "):
                out |= {(name, s) for s, dirs in enumerate(C.DIRECTIONS) if text[len(w) + 1:] in dirs}
    return out


def slot_texts(caption, frame):
    """The texts of the events first and second in TIME, read back through the frame."""
    m = frame_regex(frame).fullmatch(caption[0].lower() + caption[1:-1])
    assert m, (frame, caption)
    slots = m.groupdict()
    return [slots[k] if k in slots else slots[k.lower()] for k in "AB"]


def parse_caption(caption, frame, names):
    """((class, sector) of the event the frame puts first in TIME, of the
    second), read back through the frame's definition."""
    first, second = [parse_event(text, names) for text in slot_texts(caption, frame)]
    assert len(first) == 1 and len(second) == 1, (caption, first, second)
    return first.pop(), second.pop()


@pytest.mark.parametrize("frame", C.FRAMES)
def test_negatives_swap_time_order_and_directions_in_every_frame(frame, monkeypatch):
    monkeypatch.setattr(C, "FRAMES", [frame])       # the generator's own path, this frame only
    names, sectors = ["dog", "bell"], {"pos": (2, 4), "neg_s": (7, 1)}
    for seed in range(6):
        caps = C.triplet_captions(np.random.default_rng(seed), names, sectors)
        for k in range(C.CAPTIONS_PER_ITEM):
            pos, neg_t, neg_s = (parse_caption(caps[v][0][k], frame, names)
                                 for v in ("pos", "neg_t", "neg_s"))
            assert pos == (("dog", 2), ("bell", 4))
            assert neg_t == (("bell", 4), ("dog", 2))     # the time order swapped, directions kept
            assert neg_s == (("dog", 7), ("bell", 1))
            # neg_t holds pos's two phrases, swapped; the plain captions likewise
            assert slot_texts(caps["neg_t"][0][k], frame) == slot_texts(caps["pos"][0][k], frame)[::-1]
            assert slot_texts(caps["neg_t"][1][k], frame) == slot_texts(caps["pos"][1][k], frame)[::-1]
            # a reversed-surface frame names the later event first, in neg_t too
            first_named = min(("dog", "bell"), key=lambda n: min(
                caps["neg_t"][0][k].lower().find(w) for w in C.clauses(n) + C.SOUNDS[n]["nominals"]
                if w in caps["neg_t"][0][k].lower()))
            assert first_named == ("dog" if C.is_reversed(frame) else "bell")


def test_inventory_is_rich():
    assert len(C.FRAMES) >= 15 and sum(map(C.is_reversed, C.FRAMES)) >= 5
    assert any("followed by" in f and C.time_order(f) == ["a", "b"] for f in C.FRAMES)   # passive
    assert {"before {B}, {A}", "{B} after {A}", "{b} follows {a}"} <= set(C.FRAMES)
    assert len(C.DIRECTIONS) == 8 and len({len(d) for d in C.DIRECTIONS}) == 1
    for name, s in C.SOUNDS.items():
        assert len(s["nouns"]) >= 3 and len(s["verbs"]) >= 4 and len(s["nominals"]) >= 3, name
    assert len(C.SINGLE_FRAMES) >= 5


def _old_module(name, path, tmp_path):
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:{path}"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    (tmp_path / f"{name}.py").write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_config_from_before_the_key_keeps_its_data(tmp_path):
    """A checkpoint's config without data.captions (written at OLD_COMMIT) is
    template: the same generator params, so the same data folder and marker."""
    old = _old_module("old_sclap_family", "families/sclap/__init__.py", tmp_path)
    cfg = load_config(["--family", "sclap"])
    before = copy.deepcopy(cfg)
    del before["data"]["captions"]
    template = copy.deepcopy(cfg)
    template["data"]["captions"] = "template"
    assert fam.gen_params(before) == fam.gen_params(template) == old.gen_params(before)
    assert fam.data_dir(before) == fam.data_dir(template) == old.data_dir(before)
    assert fam.data_dir(cfg) != fam.data_dir(template)                       # diverse: its own data
    assert fam.gen_params(cfg)["captions"] == "diverse"
