"""Real Flickr30k Entities data: a small folder in the dataset's own layout
(captions in its markup, taken from public sample lines; VOC XML with 1-based
boxes, several <name>s an object, <scene>/<nobndbox>; non-square JPEGs made
with PIL) trains with train_stage1.py and evaluates with eval.py, and is left
byte-identical; each way real files differ from generated ones is handled:
1-based boxes, empty boxes, a JPEG whose size is not <size>, more than 5
boxes and phrases; the v2 augmentation keeps boxes on their pixels."""
import json
import os
import shutil
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_py
import families.grounding as fam
import train_stage1
from data.cache import UserDataError
from data.grounding.dataset import GroundingDataset, collate
from data.grounding.format import read_annotation
from training.config import load_config
from tests.folder_digest import tree

W, H = 80, 60  # photographs are not square

# public sample lines of Flickr30k Entities' Sentences/ (one image's five captions a list)
CAPTIONS = {
    "1000268201": [
        "[/EN#18/people A child] in [/EN#19/clothing/other a pink dress] is climbing up "
        "[/EN#20/other a set of stairs] in [/EN#0/notvisual an entry way] .",
        "[/EN#18/people A little girl] in [/EN#19/clothing a pink dress] going into "
        "[/EN#21/scene a wooden cabin] .",
        "[/EN#18/people A little girl] climbing [/EN#20/other the stairs] to [/EN#22/scene her playhouse] .",
        "[/EN#18/people A little girl] climbing into [/EN#21/scene a wooden playhouse] .",
        "[/EN#18/people A girl] going into [/EN#21/scene a wooden building] .",
    ],
    "176052": [
        "[/EN#176052/people People] moving [/EN#176053/other some new equipment] into "
        "[/EN#176056/scene a house] .",
        "[/EN#176052/people Two men] carry [/EN#176053/other a machine] on the left of "
        "[/EN#176055/bodyparts/people their arms] .",
    ],
    "6729": [
        "[/EN#6730/people A man] stands in [/EN#6729/vehicles/scene the subway] next to "
        "[/EN#6731/other a pole] .",
    ],
}
# chain -> 1-based VOC boxes (xmin, ymin, xmax, ymax) in the JPEG's pixels; None: <scene>
BOXES = {
    "1000268201": [([18], (11, 21, 31, 51)), ([19], (13, 31, 29, 49)), ([20], (41, 11, 71, 41)),
                   ([21, 22], None)],
    "176052": [([176052], (2, 2, 30, 40)), ([176052], (50, 5, 78, 45)), ([176053, 176054], (31, 30, 49, 58)),
               ([176055], (20, 20, 60, 30)), ([176056], None)],
    "6729": [([6730], (21, 11, 41, 59)), ([6731], (61, 1, 66, 59)), ([6729], None)],
}
SPLITS = {"train": ["1000268201", "176052", "6729"], "val": ["176052"], "test": ["6729", "176052"]}


def write_xml(path, image_id, objects, size=(W, H)):
    lines = ["<annotation>", f"  <filename>{image_id}.jpg</filename>",
             f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for chains, box in objects:
        lines.append("  <object>")
        lines += [f"    <name>{c}</name>" for c in chains]
        if box is None:
            lines.append("    <nobndbox>0</nobndbox>\n    <scene>1</scene>")
        else:
            lines.append("    <bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in
                                                    zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox>")
        lines.append("  </object>")
    lines.append("</annotation>")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def photo(image_id, objects, size=(W, H)):
    """Dark noise with each box filled by its own bright colour: the pixels of the
    box the official conversion gives, [xmin - 1, xmax - 1) x [ymin - 1, ymax - 1)."""
    rng = np.random.default_rng(int(image_id))
    arr = rng.integers(0, 60, (size[1], size[0], 3)).astype(np.uint8)
    for k, (_, box) in enumerate(objects):
        if box is not None:
            x0, y0, x1, y1 = box
            arr[y0 - 1:y1 - 1, x0 - 1:x1 - 1] = (200 + 5 * (k % 8), 255 - 10 * (k % 8), 120 + 15 * (k % 8))
    return Image.fromarray(arr)


def make_flickr(root, captions=CAPTIONS, boxes=BOXES, splits=SPLITS, sizes=None):
    """A folder as BryanPlummer/flickr30k_entities (annotations unpacked) + flickr30k-images/."""
    for sub in ("flickr30k-images", "Sentences", "Annotations"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, lines in captions.items():
        with open(os.path.join(root, "Sentences", f"{image_id}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        size = (sizes or {}).get(image_id, (W, H))
        write_xml(os.path.join(root, "Annotations", f"{image_id}.xml"), image_id, boxes[image_id], size)
        photo(image_id, boxes[image_id]).save(os.path.join(root, "flickr30k-images", f"{image_id}.jpg"),
                                              quality=95)
    for split, ids in splits.items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return str(root)


TINY = ["--data.image_size", "32", "--model.vision_width", "32", "--model.vision_depth", "1",
        "--model.vision_heads", "2", "--model.embed_dim", "32", "--model.crop_size", "16",
        "--model.text.max_length", "40", "--workers", "0", "--threads", "1", "--val-every", "0",
        "--log-every", "1", "--eval.num_heatmaps", "2", "--eval.num_matrix", "2", "--precision", "fp32"]


def test_real_layout_trains_evaluates_and_is_left_byte_identical(tmp_path, monkeypatch, capsys):
    sizes = {"6729": (2 * W, 2 * H)}  # its XML says 160x120, the JPEG is 80x60
    boxes = dict(BOXES, **{"6729": BOXES["6729"] + [([6732], (30, 30, 30, 40))]})  # zero width
    user = make_flickr(tmp_path / "flickr", boxes=boxes, sizes=sizes)
    before = tree(user)
    monkeypatch.chdir(tmp_path)  # data_cache/ and logs/ of the run: the current directory's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train_stage1.main(["--family", "grounding", "--data.root", user, "--data.generate", "false",
                                 "--data.color_jitter", "0.4", "--data.randaugment", "2",
                                 "--logs", str(tmp_path / "logs"), "--name", "real", "--batch-size", "2",
                                 "--max-steps", "2", "--max-nonfinite", "1", *TINY])
    # one warning for each split holding the mismatched image (val does not)
    assert [str(w.message).split(" differ")[0] for w in caught if "differ in size" in str(w.message)] == [
        "grounding train: 1 of 3 images", "grounding test: 1 of 2 images"]
    log = capsys.readouterr().out
    assert f"data.root {user}: layout flickr30k_entities (detected)" in log
    assert "grounding train: 3 images, 8 captions" in log and "1 empty boxes skipped" in log
    assert "1 images rescaled to their JPEG size" in log
    assert os.path.exists(os.path.join(run, "checkpoints", "step_00000002.pt"))
    out = tmp_path / "eval"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eval_py.main(["--checkpoint", os.path.join(run, "checkpoints", "latest.pt"), "--out", str(out),
                      "--device", "cpu", "--split", "test"])
    metrics = json.loads((out / "metrics.json").read_text())
    # test: 6729 (man, pole: 2 boxed phrases; the subway is a scene) and 176052 (2 + 3)
    assert metrics["gallery_size"] == 2 and metrics["num_captions"] == 3 and metrics["num_entities"] == 7
    assert tree(user) == before  # every file as it was, none added


def test_one_based_boxes_are_converted_as_the_official_parser(tmp_path):
    root = make_flickr(tmp_path)
    ann = read_annotation(os.path.join(root, "Annotations", "176052.xml"))
    # flickr30k_entities_utils.get_annotations: every coordinate - 1
    assert ann.boxes == [[1, 1, 29, 39], [49, 4, 77, 44], [30, 29, 48, 57], [19, 19, 59, 29]]
    assert ann.box_chains[2] == [176053, 176054] and ann.scene_chains == {176056}
    assert ann.chain_boxes(176052) == [0, 1]  # a chain with two boxes
    ds = GroundingDataset(root, "val", image_size=40)
    torch.testing.assert_close(ds.get(0, 0)["boxes"][0], torch.tensor([1, 1, 29, 39]) * torch.tensor(
        [40 / W, 40 / H, 40 / W, 40 / H]))


def test_an_empty_box_is_skipped_and_counted(tmp_path):
    boxes = dict(BOXES, **{"6729": [([6730], (21, 11, 21, 59)), ([6731], (61, 1, 66, 59)), ([6729], None)]})
    root = make_flickr(tmp_path, boxes=boxes)
    ds = GroundingDataset(root, "test", image_size=32)  # read, not stopped
    assert ds.records[0]["ann"].skipped == [(0, [21, 11, 21, 59])] and ds.report["degenerate_boxes"] == 1
    assert "1 empty boxes skipped" in ds.describe()
    item = ds.get(0, 0)  # "A man" lost its only box; "a pole" keeps its own
    assert len(item["boxes"]) == 1 and item["entity_spans"].tolist() == [[35, 41]]
    assert item["caption"][35:41] == "a pole"


def test_a_size_mismatch_rescales_the_boxes_and_warns_once(tmp_path):
    root = make_flickr(tmp_path, sizes={"176052": (160, 120), "6729": (40, 30)})
    with pytest.warns(UserWarning, match=r"test: 2 of 2 images differ in size.*rescaled") as rec:
        ds = GroundingDataset(root, "test", image_size=W)
    assert len([w for w in rec if "differ in size" in str(w.message)]) == 1
    ann = ds.records[1]["ann"]
    assert (ann.width, ann.height) == (W, H) and ds.report["rescaled_images"] == 2
    # XML (2, 2, 30, 40) in a 160x120 frame is (0.5, 0.5, 14.5, 19.5) in the 80x60 JPEG
    assert ann.boxes[0] == [0.5, 0.5, 14.5, 19.5]


def test_more_than_five_boxes_and_phrases_are_all_kept_or_counted(tmp_path):
    objs = [([k], (9 * k - 8, 1, 9 * k - 1, 20)) for k in range(1, 9)]            # 8 boxes
    text = " , ".join(f"[/EN#{k}/other thing {k}]" for k in range(1, 8)) + " ."   # 7 boxed phrases
    root = make_flickr(tmp_path, captions={"7": [text]}, boxes={"7": objs},
                       splits={"train": ["7"], "val": ["7"], "test": ["7"]})
    ds = GroundingDataset(root, "test", image_size=32)
    it = ds.get(0, 0)
    assert it["boxes"].shape == (8, 4) and it["entity_spans"].shape == (7, 2)
    assert it["entity_target"].sum(1).tolist() == [1] * 7 and it["entity_target"][6, 6]
    assert collate([it, it])["entity_target"].shape == (2, 7, 8)
    capped = GroundingDataset(root, "test", image_size=32, max_objects=5, max_entities=5)
    assert capped.report["boxes_dropped"] == 3 and capped.report["phrases_dropped"] == 2
    assert "drop 3 box slots and 2 phrases" in capped.describe()
    assert capped.get(0, 0)["boxes"].shape == (5, 4)
    with pytest.raises(ValueError, match="data.max_objects must be null .* or a positive integer, got 0"):
        GroundingDataset(root, "test", max_objects=0)


def _bright_box(image):
    """Bounding box (x0, y0, x1) of the pixels brighter than the image's midpoint."""
    g = image.mean(0)
    ys, xs = torch.nonzero(g > (g.max() + g.min()) / 2, as_tuple=True)
    return xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1


def test_v2_augmentation_keeps_boxes_on_their_pixels_and_swaps_left_right(tmp_path):
    cap = "[/EN#1/people The man] on the left holds [/EN#2/other a sign] ."
    objs = [([1], (9, 15, 30, 50)), ([2], (51, 41, 55, 45))]
    root = make_flickr(tmp_path, captions={"1": [cap]}, boxes={"1": objs},
                       splits={"train": ["1"], "val": ["1"], "test": ["1"]})
    geo = dict(image_size=48, train=True, crop_scale_min=0.5)
    colour = dict(geo, color_jitter=0.4, randaugment=2)
    plain = GroundingDataset(root, "train", hflip=0.5, **geo)
    ds, noflip = GroundingDataset(root, "train", hflip=0.5, **colour), GroundingDataset(root, "train", hflip=0.0, **colour)
    state = torch.get_rng_state()
    flips = 0
    for epoch in range(16):
        for d in (plain, ds, noflip):
            d.set_epoch(epoch)
        geom, it, ref = plain[0], ds[0], noflip[0]
        # the man's box frames his (bright) pixels in every crop and flip
        man = geom["image"].clone()
        x0, y0, x1, y1 = geom["boxes"][0].tolist()
        sx0, sy0, sx1, sy1 = geom["boxes"][1].tolist()  # the sign, with its blurred edge, blanked
        man[:, max(0, int(sy0) - 1):int(sy1) + 2, max(0, int(sx0) - 1):int(sx1) + 2] = man.min()
        bx0, by0, bx1, by1 = _bright_box(man)
        assert max(abs(bx0 - x0), abs(by0 - y0), abs(bx1 - x1), abs(by1 - y1)) <= 2.5
        # the colour ops move no box and change the pixels
        assert torch.equal(it["boxes"], geom["boxes"]) and not torch.equal(it["image"], geom["image"])
        assert torch.equal(it["image"], ds[0]["image"])  # the same view again: resume is exact
        flipped = not torch.equal(it["boxes"], ref["boxes"])
        if flipped:  # the same pixels, mirrored, under the mirrored box
            torch.testing.assert_close(it["image"], ref["image"].flip(-1))
            rx0, ry0, rx1, ry1 = ref["boxes"][0].tolist()
            torch.testing.assert_close(it["boxes"][0], torch.tensor([48 - rx1, ry0, 48 - rx0, ry1]))
        flips += flipped
        assert it["caption"] == "The man on the %s holds a sign ." % ("right" if flipped else "left")
        a, b = it["entity_spans"][1].tolist()
        assert it["caption"][a:b] == "a sign"
    assert 0 < flips < 16
    assert torch.equal(torch.get_rng_state(), state)  # colour draws leave the global RNG alone


def test_the_repositorys_annotations_zip_is_read_in_place(tmp_path, capsys):
    unpacked = make_flickr(tmp_path / "unpacked")
    user = tmp_path / "clone"  # the repository as cloned (annotations.zip) + the Flickr30k images
    shutil.copytree(os.path.join(unpacked, "flickr30k-images"), user / "flickr30k-images")
    for split in SPLITS:
        shutil.copy(os.path.join(unpacked, f"{split}.txt"), user)
    with zipfile.ZipFile(user / "annotations.zip", "w") as z:
        for sub in ("Annotations", "Sentences"):
            for name in sorted(os.listdir(os.path.join(unpacked, sub))):
                z.write(os.path.join(unpacked, sub, name), f"{sub}/{name}")
    before = tree(user)
    cfg = load_config(["--family", "grounding", "--data.root", str(user), "--data.generate", "false"])
    fam.prepare_data(cfg)
    assert "layout flickr30k_entities_zip (detected)" in capsys.readouterr().out
    zipped = fam.build_datasets(cfg)
    for split in SPLITS:
        want = GroundingDataset(unpacked, split, image_size=cfg["data"]["image_size"])
        assert [r["captions"] for r in zipped[split].records] == [r["captions"] for r in want.records]
        assert [r["ann"] for r in zipped[split].records] == [r["ann"] for r in want.records]
        for k, v in zipped[split].get(0, 0).items():
            assert v == want.get(0, 0)[k] if isinstance(v, str) else torch.equal(v, want.get(0, 0)[k]), k
    assert tree(user) == before  # read in place: nothing unpacked, nothing added
    with pytest.raises(UserDataError, match=r"--data.format flickr30k_entities_zip expects annotations.zip"):
        fam.prepare_data(load_config(["--family", "grounding", "--data.root", unpacked, "--data.generate",
                                      "false", "--data.format", "flickr30k_entities_zip"]))


def test_detection_lists_what_it_looked_for_and_format_is_checked(tmp_path):
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)

    def prepare(root, *extra):
        fam.prepare_data(load_config(["--family", "grounding", "--data.root", str(root),
                                      "--data.generate", "false", *extra]))

    with pytest.raises(UserDataError, match=r"(?s)matches none.*found: images.*flickr30k_entities: "
                                            r"Sentences/<id>\.txt, Annotations/<id>\.xml"):
        prepare(other)
    with pytest.raises(UserDataError, match=r"--data.format 'voc': unknown grounding layout"):
        prepare(make_flickr(tmp_path / "f"), "--data.format", "voc")
    with pytest.raises(UserDataError, match="pass --data.root"):
        fam.prepare_data(load_config(["--family", "grounding", "--data.generate", "false"]))
    assert os.listdir(other) == ["images"]
