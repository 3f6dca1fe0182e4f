"""The frozen held-out grammar of the grounding family (issue 13): apart from
the training grammars by construction (checked over their whole inventories),
its phrases point at the right boxes, and evaluate reports every text-side
metric again under heldout_ keys (one of them against a hand computation)."""
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import families.grounding as fam
from data.grounding import captions as cg
from data.grounding import heldout as ho
from data.grounding.dataset import GroundingDataset
from data.grounding.format import parse_caption
from data.grounding.generate import generate
from data.grounding.views import ImageBoxes
from families.grounding.evaluation import heldout_dataset
from training.config import load_config

TRAINING = cg.inventory_words(cg.TRAINING_INVENTORY)
# words a sentence cannot do without; everything else a held-out frame says is its own
FUNCTION = {"a", "an", "the", "is", "are", "can", "one", "of", "than"}


def _skeleton(frame):
    return re.sub(r"\{[^}]*\}", "{}", frame.lower()).strip(" .")


def test_frames_and_connectors_are_the_held_out_grammars_own():
    training = {_skeleton(f) for f in cg.TRAINING_INVENTORY["frames"]}
    for frame in ho.INVENTORY["frames"]:
        assert _skeleton(frame) not in training, frame
        content = set(cg.words(re.sub(r"\{[^}]*\}", " ", frame))) - FUNCTION
        assert content and not content & TRAINING, (frame, content & TRAINING)
    training_conn = {_skeleton(c) for c in cg.TRAINING_INVENTORY["connectors"]}
    for conn in ho.INVENTORY["connectors"]:
        assert _skeleton(conn) not in training_conn
        joins = [j.strip(" ,") for j in re.split(r"\{\d\}", conn) if j.strip(" ,")]
        # each joining word group ("together with", "alongside") has a word no training caption holds
        assert joins and all(set(cg.words(j)) - TRAINING for j in joins), conn


@pytest.mark.parametrize("attr", ["colour", "shape", "size", "texture", "relation", "background"])
def test_every_value_has_a_wording_the_training_grammars_never_write(attr):
    """For every value of the attribute (the generator's whole set): held-out wordings, none a
    training wording, each with a word no training caption holds, and at least one whose every
    content word is new."""
    train, held = cg.TRAINING_INVENTORY[attr], ho.INVENTORY[attr]
    assert set(held) == set(train)       # every colour, shape, ... of the generator
    every_training_wording = {w for ws in train.values() for w in ws}
    for value, wordings in held.items():
        assert wordings
        for w in wordings:
            assert w not in every_training_wording
            assert set(cg.words(w)) - TRAINING, (value, w)
        assert any(not (set(cg.words(w)) - FUNCTION) & TRAINING for w in wordings), (value, wordings)


def test_every_position_has_a_new_wording():
    train = set(cg.TRAINING_INVENTORY["position"])
    for v in ("top", "bottom", ""):
        for h in ("left", "right", ""):
            wordings = ho.position_words(v, h)
            assert wordings and not set(wordings) & train
            # every word but the sentence's glue is new
            assert all(not (set(cg.words(w)) - FUNCTION - {"in", "at"}) & TRAINING for w in wordings), wordings
            assert all(set(cg.words(w)) - TRAINING for w in wordings)


def _scene_and_lexicon():
    lex = []
    for attr in ("colour", "shape", "size", "texture"):
        for value, wordings in ho.INVENTORY[attr].items():
            lex += [(w, attr, value) for w in wordings]
    return sorted(lex, key=lambda t: -len(t[0]))


def _parse(text, lex):
    rest, found = text.split(" ", 1)[1], {}
    while rest:
        w, attr, value = next(t for t in lex if rest == t[0] or rest.startswith(t[0] + " "))
        found[attr] = value
        rest = rest[len(w):].lstrip()
    return found


def _frame_regex(frame):
    out, i = "", 0
    for m in re.finditer(r"\{(?:(a|the) )?([A-Z])\}", frame):
        out += re.escape(frame[i:m.start()])
        kind, name = m.groups()
        if name == "G":
            out += r"\[/EN#\d+/scene [^\]]+\]"
        elif kind:
            out += rf"\[/EN#(?P<{name}>\d+)/other [^\]]+\]"
        elif name == "L":
            out += r"(?:\[/EN#\d+/other [^\]]+\](?: together with | alongside | , )?)+"
        else:
            pool = ho.INVENTORY["relation"].values() if name == "R" else [ho.INVENTORY["position"]]
            alts = sorted({w for ws in pool for w in ws}, key=len, reverse=True)
            out += rf"(?P<{name}>{'|'.join(map(re.escape, alts))})"
        i = m.end()
    return re.compile(out + re.escape(frame[i:]) + r" \.")


def test_held_out_phrases_point_at_their_boxes_and_relations_are_true(tmp_path):
    generate(str(tmp_path), 2, 2, 40, image_size=96, captions_per_image=1, seed=3, captions="diverse")
    scenes = ho.load_scenes(str(tmp_path))
    ds = GroundingDataset(str(tmp_path), "test", image_size=96)
    lex = _scene_and_lexicon()
    frames = [(f, _frame_regex(f)) for f in ho.INVENTORY["frames"]]
    held_vocab = cg.inventory_words(ho.INVENTORY)
    used = set()
    for rec in ds.records:
        scene = scenes[rec["id"]]
        lines = ho.heldout_captions(rec["id"], scene)
        assert lines == ho.heldout_captions(rec["id"], scene)            # deterministic per image id
        by_chain = {o["chain"]: o for o in scene["objects"]}
        for line in lines:
            cap = parse_caption(line)
            assert set(cg.words(cap.text)) <= held_vocab, line
            for p in cap.phrases:
                if p.chain == scene["scene_chain"]:
                    assert p.types == ["scene"] and rec["ann"].chain_boxes(p.chain) == []
                    continue
                attrs = _parse(p.text, lex)
                named = [o for o in scene["objects"] if all(o[k] == v for k, v in attrs.items())]
                assert named == [by_chain[p.chain]], (p.text, scene["objects"])
                # the phrase's chain is, in the annotation file, the box of the object it names
                assert [rec["ann"].boxes[b] for b in rec["ann"].chain_boxes(p.chain)] == [named[0]["box"]]
            hits = [(f, m) for f, rx in frames if (m := rx.fullmatch(line))]
            assert len(hits) == 1, line
            f, m = hits[0]
            used.add(f)
            g = m.groupdict()
            if g.get("R"):
                assert g["R"] in ho.RELATIONS[ho.relation_key(by_chain[int(g["A"])], by_chain[int(g["B"])])]
            if g.get("P"):
                assert g["P"] in ho.position_words(*ho.position_key(by_chain[int(g["A"])], 96, 96))
    assert used == set(ho.INVENTORY["frames"])
    # other images, other captions (the seed is the image id)
    ids = [r["id"] for r in ds.records]
    assert len({tuple(ho.heldout_captions(i, scenes[i])) for i in ids}) == len(ids)


TINY = ["--data.num_train", "2", "--data.num_val", "1", "--data.num_test", "3",
        "--data.gen_image_size", "32", "--data.image_size", "32", "--precision", "fp32",
        "--model.vision_width", "32", "--model.vision_depth", "1", "--model.vision_heads", "2",
        "--model.embed_dim", "32", "--model.crop_size", "16", "--model.text.max_length", "32"]


def test_evaluate_reports_heldout_keys_checked_by_hand(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["--family", "grounding"] + TINY)
    del cfg["data"]["captions"]                      # a checkpoint's config from before issue 13
    assert fam.data_root(cfg).endswith("_template")
    fam.prepare_data(cfg)
    torch.manual_seed(0)
    model, crit = fam.build_model(cfg), fam.build_criterion(cfg)
    ds = fam.build_datasets(cfg)["test"]
    m = fam.evaluate(model, crit, ds, cfg, "cpu")
    text_keys = [k for k in m if k.startswith(("t2i_", "i2t_", "entity_object_", "num_"))]
    assert len(text_keys) >= 14 and all(f"heldout_{k}" in m for k in text_keys)
    assert m["heldout_num_captions"] == ho.CAPTIONS_PER_IMAGE * len(ds)

    # by hand: the held-out captions of each image, its encodings and its boxes (never overlapping)
    images = torch.stack([ImageBoxes(ds)[i]["image"] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        img = F.normalize(model.encode_image(images)[0], dim=-1)                        # [3, D]
        chance, ranks = [], []
        for i, rec in enumerate(ds.records):
            scene = ho.load_scenes(fam.data_root(cfg))[rec["id"]]
            for line in ho.heldout_captions(rec["id"], scene):
                cap = parse_caption(line)
                boxed = [p for p in cap.phrases if p.chain != scene["scene_chain"]]
                chance += [1 / len(scene["objects"])] * len(boxed)
                spans = torch.tensor([[p.start, p.end] for p in boxed]).reshape(1, -1, 2)
                txt = model.encode_text([cap.text], spans, torch.ones(1, len(boxed), dtype=torch.bool))[0]
                sims = (F.normalize(txt, dim=-1) @ img.t())[0]                          # [3]
                ranks.append(1 + int((sims > sims[i]).sum()))
    assert m["heldout_num_entities"] == len(chance)
    assert m["heldout_entity_object_chance"] == pytest.approx(np.mean(chance), abs=1e-6)
    assert m["heldout_t2i_R@1"] == pytest.approx(np.mean(np.array(ranks) == 1))
    assert m["heldout_t2i_mean_rank"] == pytest.approx(np.mean(ranks))

    # the template captions were written
    generate(str(tmp_path / "ref"), 2, 1, 3, image_size=32, captions_per_image=3, seed=0, captions="template")
    for name in os.listdir(tmp_path / "ref" / "Sentences"):
        assert (tmp_path / "ref" / "Sentences" / name).read_bytes() == \
            open(os.path.join(ds.root, "Sentences", name), "rb").read()
    capsys.readouterr()

    # a folder without scene objects (real data; data of before issue 13): no heldout_ keys, one log line
    os.remove(os.path.join(ds.root, ho.SCENE_OBJECTS))
    assert heldout_dataset(ds) is None
    m2 = fam.evaluate(model, crit, ds, cfg, "cpu")
    assert not [k for k in m2 if k.startswith("heldout_")]
    assert {k: v for k, v in m2.items()} == pytest.approx({k: v for k, v in m.items() if not k.startswith("heldout_")})
    assert capsys.readouterr().out.count("no heldout_ metrics") == 1


def test_scene_objects_that_do_not_match_the_annotations_raise(tmp_path):
    generate(str(tmp_path), 1, 1, 1, image_size=32, captions_per_image=1, seed=0)
    ds = GroundingDataset(str(tmp_path), "test", image_size=32)
    path = tmp_path / ho.SCENE_OBJECTS
    text = path.read_text()
    path.write_text(text.replace(f'"{ds.records[0]["id"]}"', '"99999999"'))
    with pytest.raises(ValueError, match=r"scene_objects\.json image 20000000: missing"):
        heldout_dataset(ds)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"scene_objects\.json: not valid JSON"):
        heldout_dataset(ds)
