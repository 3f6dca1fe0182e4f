"""Radar: a user's folder in each documented layout (the project's mmwave/*.npz
without our marker, the public mmExpert udoppler/ layout from its root or its
repository root) found by looking, trained on (train_stage1, 2 steps) and
evaluated (eval.py), every file byte-identical afterwards and nothing added;
issue 10's deletion case; the fewer-views error; seed 001's split lists with
mixing ratios; the T-range and min_motion_len keys; sub-segment captions;
HumanML3D -> radar from the train script's command line."""
import json
import os

import numpy as np
import pytest

import eval as eval_script
import families.radar as fam
import train_stage1
from data.cache import UserDataError, derived_dir
from data.radar.dataset import RadarDataError, RadarTextDataset
from data.radar.humanml3d_export import export_sim_motions
from tests.radar_tiny import tiny_args, tiny_cfg
from tests.folder_digest import tree

MM = os.path.join("dataset", "HumanML3D")


def _doppler(t, placement=0):
    """[T, 128] time first; every bin of frame k holds k + 1 + 1000 * placement."""
    return np.broadcast_to(np.arange(1, t + 1, dtype=np.float32)[:, None] + 1000 * placement,
                           (t, 128)).copy()


def _mmexpert(root, lengths=None, rotations=True, split_captions=True, texts=None):
    """The public mmExpert layout as its split script leaves it: data.root =
    dataset/HumanML3D with udoppler/{id}A.npy, udoppler_rotation/{id}{A..H}.npy,
    texts/{id}.txt and _split/*.json whose filefolder is relative to the
    repository root. lengths: {split: {id: T}}."""
    lengths = lengths or {"train": {"000000": 120, "000001": 140, "000002": 130, "000003": 150},
                          "val": {"000010": 120, "000011": 125}, "test": {"000010": 120, "000011": 125}}
    for sub in ("udoppler", "udoppler_rotation", "texts", "_split"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, clips in lengths.items():
        entries = {}
        for k, (cid, t) in enumerate(clips.items()):
            np.save(os.path.join(root, "udoppler", f"{cid}A.npy"), _doppler(t))
            if rotations:
                for p, letter in enumerate("ABCDEFGH"):
                    np.save(os.path.join(root, "udoppler_rotation", f"{cid}{letter}.npy"), _doppler(t, p))
            line = (texts or {}).get(cid, f"A person does move {cid}.#a/DET person/NOUN#0.0#0.0\n")
            with open(os.path.join(root, "texts", f"{cid}.txt"), "w") as f:
                f.write(line)
            entries[f"{k:06d}"] = {"filefolder": "dataset/HumanML3D/udoppler", "fileindex": cid}
            if split_captions:
                entries[f"{k:06d}"]["captions"] = [f"a person does move {cid}"]
        with open(os.path.join(root, "_split", f"{split}.json"), "w") as f:
            json.dump(entries, f)
    return str(root)


def _project(root, lengths=None):
    """The README's three-view format written by hand: mmwave/*.npz, texts/,
    _split/, no marker, no meta/, no data_info.json."""
    lengths = lengths or {"train": {"a": 120, "b": 130, "c": 140, "d": 150}, "val": {"e": 120, "f": 130},
                          "test": {"g": 120, "h": 125}}
    for sub in ("mmwave", "texts", "_split"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, clips in lengths.items():
        entries = {}
        for cid, t in clips.items():
            ramp = np.arange(1, t + 1, dtype=np.float32)
            np.savez(os.path.join(root, "mmwave", f"{cid}.npz"),
                     **{k: np.broadcast_to(ramp, (n, t)).copy()
                        for k, n in (("range_time", 256), ("doppler_time", 128), ("azimuth_time", 128))})
            with open(os.path.join(root, "texts", f"{cid}.txt"), "w") as f:
                f.write(f"A person does {cid}.#a/DET#0.0#0.0\nsomeone does {cid}#x#0.0#0.0\n")
            entries[cid] = {"filefolder": ".", "fileindex": cid}
        with open(os.path.join(root, "_split", f"{split}.json"), "w") as f:
            json.dump(entries, f)
    return str(root)


def _train_and_eval(root, tmp_path, *extra):
    logs = tmp_path / "logs"
    args = tiny_args(root, logs) + ["--data.generate", "false", "--max-steps", "2", "--name", "user",
                                    "--data.cache_dir", str(tmp_path / "cache"), *extra]
    train_stage1.main(args)
    m = eval_script.main(["--checkpoint", str(logs / "user" / "checkpoints" / "latest.pt"),
                          "--out", str(tmp_path / "eval")])
    assert 0.0 <= m["t2r_R@1"] <= 1.0
    return m


# ------------------------------------------------------------------ issue 10's case
def test_issue10_mmexpert_folder_refused_then_trained_never_touched(tmp_path, capsys):
    """texts/, _split/, udoppler/ and generation on: prepare_data deleted texts/
    and _split/ and trained on simulated clips. Now: an error naming
    --data.generate false, nothing changed; with it, trains and evaluates."""
    root = _mmexpert(tmp_path / "HumanML3D")
    before = tree(root)
    with pytest.raises(UserDataError, match=r"HumanML3D.*--data.generate false"):
        train_stage1.main(tiny_args(root, tmp_path / "logs") + ["--max-steps", "2", "--name", "gen"])
    assert tree(root) == before
    _train_and_eval(root, tmp_path, "--data.radar_views", "doppler", "--model.text.disk_cache", "true")
    out = capsys.readouterr().out
    assert "mmexpert layout detected" in out
    assert f"resolved against data.root as {os.path.join(root, 'udoppler')}" in out
    assert tree(root) == before
    # the text cache of a user's folder lives under data.cache_dir, never beside the data
    cache = derived_dir(root, "radar", False, str(tmp_path / "cache"))
    assert os.listdir(os.path.join(cache, "text_cache"))


def test_fewer_views_than_radar_views_is_an_error_naming_them(tmp_path):
    root = _mmexpert(tmp_path / "HumanML3D")
    with pytest.raises(RadarDataError, match=r"holds only doppler_time.*asks for range_time, "
                                             r"azimuth_time.*--data.radar_views doppler"):
        fam.prepare_data(tiny_cfg(root, "--data.generate", "false"))
    model = fam.build_model(tiny_cfg(root, "--data.generate", "false", "--data.radar_views", "doppler"))
    assert tuple(model.radar_encoder.views) == ("doppler_time",)          # built for the one view


# ------------------------------------------------------------------ the project's layout
def test_project_layout_without_marker_loads_trains_and_is_untouched(tmp_path, capsys):
    root = _project(tmp_path / "mine")
    before = tree(root)
    with pytest.raises(UserDataError, match="--data.generate false"):
        fam.prepare_data(tiny_cfg(root))
    _train_and_eval(root, tmp_path)
    assert "project layout detected" in capsys.readouterr().out
    assert tree(root) == before
    ds = fam.build_datasets(tiny_cfg(root, "--data.generate", "false"))["train"].base
    assert ds.items[0]["captions"] == ["a person does a", "someone does a"]   # from texts/


def test_clip_without_captions_names_the_texts_file(tmp_path):
    root = _project(tmp_path / "mine")
    os.remove(os.path.join(root, "texts", "b.txt"))
    with pytest.raises(RadarDataError, match=r"entry 'b' of .*train.json: no captions; expected "
                                             r"'captions' in the entry or .*texts/b.txt"):
        fam.build_datasets(tiny_cfg(root, "--data.generate", "false"))


def test_detection_forced_format_and_no_match(tmp_path, capsys):
    root = _mmexpert(tmp_path / "HumanML3D")
    cfg = tiny_cfg(root, "--data.generate", "false", "--data.radar_views", "doppler",
                   "--data.format", "project")
    with pytest.raises(UserDataError, match=r"--data.format project expects mmwave/"):
        fam.prepare_data(cfg)
    empty = tmp_path / "empty"
    (empty / "stuff").mkdir(parents=True)
    with pytest.raises(UserDataError, match=r"(?s)matches none.*project: mmwave/.*mmexpert: udoppler/"):
        fam.prepare_data(tiny_cfg(empty, "--data.generate", "false"))


def test_mmexpert_from_its_repository_root_same_clips(tmp_path):
    repo = tmp_path / "mmExpert"
    inner = _mmexpert(repo / MM)
    with pytest.warns(UserWarning, match="the val split equals the test split"):   # as mmExpert writes them
        a = fam.build_datasets(tiny_cfg(inner, "--data.generate", "false", "--data.radar_views", "doppler"))
    b = fam.build_datasets(tiny_cfg(repo, "--data.generate", "false", "--data.radar_views", "doppler"))
    for s in ("train", "val", "test"):
        assert [it["npz"] for it in a[s].base.items] == [it["npz"] for it in b[s].base.items]
        assert len(a[s]) == {"train": 4, "val": 2, "test": 2}[s]
    item = b["val"][0]
    assert set(item) >= {"doppler_time", "radar_mask"} and "range_time" not in item
    # [T, 128] time first on disk -> [128, L] served; frame k holds k + 1
    np.testing.assert_allclose(item["doppler_time"][5, :120].numpy(), np.log1p(np.arange(1, 121)), rtol=1e-6)
    assert int(item["radar_mask"].sum()) == 120 and item["caption"] == "a person does move 000010"


def test_rotations_augment_training_only(tmp_path):
    root = _mmexpert(tmp_path / "HumanML3D")
    data = fam.build_datasets(tiny_cfg(root, "--data.generate", "false", "--data.radar_views", "doppler",
                                       "--data.log_norm", "false"))
    raw = {s: RadarTextDataset(root, s, radar_views="doppler", log_norm=True, max_motion_length=224,
                               train=s == "train") for s in ("train", "val")}
    seen = set()
    for epoch in range(6):
        raw["train"].set_epoch(epoch)
        for i in range(len(raw["train"])):
            first = float(np.expm1(raw["train"][i]["doppler_time"][0, 0].item()))
            seen.add(int(first) // 1000)                   # which placement's file was read
    assert len(seen) >= 5 and seen <= set(range(8))
    assert len(data["train"].base.items[0]["rotations"]) == 8
    assert all(not it["rotations"] for it in raw["val"].items)       # val/test: placement A only
    for epoch in range(3):
        raw["val"].set_epoch(epoch)
        assert float(np.expm1(raw["val"][0]["doppler_time"][0, 0].item())) == pytest.approx(1.0)


# ------------------------------------------------------------------ split lists and ratios
def test_split_lists_mixed_by_ratio_deterministic_from_the_seed(tmp_path):
    root = _mmexpert(tmp_path / "HumanML3D", lengths={
        "a": {f"a{i:02d}": 120 for i in range(10)}, "b": {f"b{i:02d}": 120 for i in range(8)},
        "val": {"v0": 120}, "test": {"v0": 120}}, rotations=False)
    lists = "[dataset/HumanML3D/_split/a.json, _split/b.json]"    # mmExpert's form, and ours

    def keys(*extra):
        cfg = tiny_cfg(root, "--data.generate", "false", "--data.radar_views", "doppler",
                       "--data.train_split", lists, *extra)
        ds = fam.build_datasets(cfg)["train"].base
        return ds.source_counts, [it["npz"].rsplit("/", 1)[1][:-5] for it in ds.items]

    counts, picked = keys("--data.train_ratio", "[1.0, 0.5]")
    assert counts == [10, 4] and len(picked) == 14
    assert picked[:10] == [f"a{i:02d}" for i in range(10)]
    b = picked[10:]
    assert b == sorted(b) and set(b) < {f"b{i:02d}" for i in range(8)}    # a subset, in file order
    assert keys("--data.train_ratio", "[1.0, 0.5]")[1] == picked             # same seed: same clips
    others = {tuple(keys("--data.train_ratio", "[1.0, 0.5]", "--data.seed", str(s))[1][10:]) for s in range(1, 6)}
    assert len(others | {tuple(b)}) > 1                                      # the seed draws them
    assert keys()[0] == [10, 8]
    with pytest.raises(UserDataError, match=r"2 files but data.train_ratio 1 ratios"):
        keys("--data.train_ratio", "[0.5]")
    with pytest.raises(UserDataError, match=r"train_ratio: 1.5 .*expected 0 < ratio <= 1"):
        keys("--data.train_ratio", "[1.5, 1.0]")
    with pytest.raises(FileNotFoundError, match=r"nope.json: split file \(data.train_split\) not found"):
        fam.build_datasets(tiny_cfg(root, "--data.generate", "false", "--data.radar_views", "doppler",
                                    "--data.train_split", "[nope.json]"))


# ------------------------------------------------------------------ T range, min_motion_len, sub-segments
def test_t_range_and_min_motion_len_are_config_keys(tmp_path):
    root = _mmexpert(tmp_path / "HumanML3D", lengths={
        "train": {"x60": 60, "x120": 120}, "val": {"v": 120}, "test": {"v": 120}}, rotations=False)
    base = ("--data.generate", "false", "--data.radar_views", "doppler")
    with pytest.raises(RadarDataError, match=r"x60A.npy: T=60 frames; expected 100 <= T < 500 "
                                             r"\(data.min_frames, data.max_frames"):
        fam.build_datasets(tiny_cfg(root, *base))
    with pytest.warns(UserWarning, match="dropped 1 clips shorter than min_motion_len=96"):
        ds = fam.build_datasets(tiny_cfg(root, *base, "--data.min_frames", "40"))["train"]
    assert [it["T"] for it in ds.base.items] == [120]
    ds = fam.build_datasets(tiny_cfg(root, *base, "--data.min_frames", "40", "--data.min_motion_len", "40"))
    assert [it["T"] for it in ds["train"].base.items] == [60, 120]
    with pytest.warns(UserWarning, match="dropped 1 clips without 100 <= T < 500"):
        ds = fam.build_datasets(tiny_cfg(root, *base, "--data.filter_invalid", "true"))
    assert [it["T"] for it in ds["train"].base.items] == [120]
    with pytest.raises(RadarDataError, match=r"x120A.npy: T=120 frames; expected 40 <= T < 100"):
        fam.build_datasets(tiny_cfg(root, *base, "--data.min_frames", "40", "--data.max_frames", "100",
                                    "--data.min_motion_len", "40"))
    ds = fam.build_datasets(tiny_cfg(root, *base, "--data.min_frames", "0", "--data.max_frames", "0",
                                     "--data.min_motion_len", "1"))
    assert len(ds["train"]) == 2


def test_sub_segment_caption_lines_are_clips_of_their_frames(tmp_path):
    texts = {"000000": "a person walks.#a/DET#0.0#0.0\nthen the person jumps#x#1.0#6.0\n"
                       "a tiny bit#x#2.0#2.5\n",
             "000001": "only a part#x#0.5#6.0\n"}
    root = _mmexpert(tmp_path / "HumanML3D", texts=texts, split_captions=False, rotations=False, lengths={
        "train": {"000000": 200, "000001": 150}, "val": {"000000": 200}, "test": {"000000": 200}})
    with pytest.warns(UserWarning, match=r"skipped 1 caption sub-segments"):   # 10 frames
        ds = RadarTextDataset(root, "train", radar_views="doppler", max_motion_length=224, train=False)
    items = {it["key"]: it for it in ds.items}
    assert sorted(items) == ["000000", "000000_f20-120", "000001_f10-120"]   # 20 frames/s
    assert items["000000"]["captions"] == ["a person walks"]
    assert items["000000_f20-120"]["captions"] == ["then the person jumps"]
    seg = ds[[it["key"] for it in ds.items].index("000000_f20-120")]
    assert int(seg["radar_mask"].sum()) == 100
    np.testing.assert_allclose(seg["doppler_time"][0, :100].numpy(), np.log1p(np.arange(21, 121)), rtol=1e-6)
    half = RadarTextDataset(root, "train", radar_views="doppler", max_motion_length=224, train=False,
                            frame_rate=10.0, t_range=(40, 500), min_motion_len=40)
    assert sorted(it["key"] for it in half.items) == ["000000", "000000_f10-60", "000001_f5-60"]


# ------------------------------------------------------------------ HumanML3D from the train script
def test_train_stage1_simulates_a_humanml3d_folder_then_trains(tmp_path, capsys):
    src = export_sim_motions(str(tmp_path / "h3d"), 4, 1, 2, seed=4)
    before = tree(src)
    cache, logs = tmp_path / "radar", tmp_path / "logs"
    args = ["--preset", "humanml3d"] + tiny_args(cache, logs) + [
        "--data.humanml3d", src, "--data.sim", "{placements: A}", "--max-steps", "2", "--name", "h3d"]
    train_stage1.main(args)
    assert "radar clips simulated from the HumanML3D folder" in capsys.readouterr().out
    marker = json.load(open(cache / ".structclip-generated.json"))["params"]
    # only the clips the loader keeps are simulated: HumanML3D's 40 <= T < 200
    assert marker["source"] == src and marker["min_frames"] == 40 and marker["max_frames"] == 199
    info = json.load(open(cache / "data_info.json"))
    lengths = [json.load(open(cache / "meta" / f"{k}.json"))["num_frames"]
               for s in ("train", "val", "test") for k in json.load(open(cache / "_split" / f"{s}.json"))]
    assert all(40 <= t < 200 for t in lengths) and info["skipped"]["long"] >= 1   # > 10 s: skipped, counted
    m = eval_script.main(["--checkpoint", str(logs / "h3d" / "checkpoints" / "latest.pt"),
                          "--out", str(tmp_path / "eval")])
    assert m["t2r_chance_R@10"] == 1.0
    assert tree(src) == before
    with pytest.raises(UserDataError, match="needs --data.generate true"):
        fam.prepare_data(tiny_cfg(cache, "--data.humanml3d", src, "--data.generate", "false"))
