"""HumanML3D motion -> radar: physics on constructed SMPL-22 motion, the real
HumanML3D layout simulated and read end to end, the mmExpert layout, the
cache rule, bad input, and the simulator's motions exported as HumanML3D."""
import json
import os

import numpy as np
import pytest

import eval as eval_script
import families.radar as fam
import train_stage1
from data.cache import UserDataError
from data.radar.dataset import RadarTextDataset
from data.radar.fmcw import RadarConfig
from data.radar.humanml3d import HUMANML3D_DEFAULTS, main, simulate_humanml3d, simulate_motion
from data.radar.humanml3d_export import export_sim_motions
from data.radar.motion import JOINTS
from data.radar.sim import generate_radar_dataset
from data.radar.smpl import extend, kinect_to_humanml3d, mirror, resample
from data.radar.temporal import TemporalNegatives
from tests.radar_tiny import tiny_args, tiny_cfg
from tests.smpl_motions import walk
from tests.folder_digest import tree

CFG = RadarConfig()
CLEAN = dict(HUMANML3D_DEFAULTS, clutter_points=(0, 0), multipath=False, noise_power=0.0)


# ------------------------------------------------------------------ physics
@pytest.mark.parametrize("placement,sign", [("E", 1.0), ("A", -1.0)])
def test_walking_straight_range_slope_and_doppler_side(placement, sign):
    """E: back to the radar, walking away; A: facing it, walking towards it."""
    v = 1.2
    maps = simulate_motion(walk(120, v), placement, CLEAN)[placement]
    rt, dt = maps["range_time"], maps["doppler_time"]
    t = np.arange(rt.shape[1]) / 20.0
    r_peak = rt.argmax(0) * CFG.range_res                       # range of peak energy per frame
    slope = np.polyfit(t, r_peak, 1)[0]
    assert abs(slope - sign * v) < 0.05 * v, slope
    # Doppler: bin 64 + v_r / dv (fmcw.py; v_r > 0 = receding, bins above 64).
    power = dt.astype(np.float64) ** 2
    away, towards = power[65:].sum(), power[:64].sum()
    share = (away if sign > 0 else towards) / (away + towards)
    assert share > 0.95, share
    # the torso's line: |f_D| = 2 v / lambda, with lambda = c / 77 GHz and 50 Hz bins (20 ms frames)
    f_peak = np.abs(np.median(dt.argmax(0)) - 64) / 0.02
    f_expected = 2 * v / (299_792_458.0 / 77e9)
    assert abs(f_peak - f_expected) < 1.0 / 0.02 + 0.03 * f_expected, (f_peak, f_expected)


def test_still_subject_only_zero_doppler_clutter_included():
    """The simulator has no static-clutter removal: a still subject, its wall
    image and the clutter points all sit on the zero-Doppler line (bin 64 and
    the Hann main lobe's two neighbours), nothing elsewhere."""
    p = dict(HUMANML3D_DEFAULTS, noise_power=0.0)              # clutter and multipath on
    dt = simulate_motion(walk(100, 0.0), "A", p, "still")["A"]["doppler_time"].astype(np.float64)
    power = dt ** 2
    assert power[63:66].sum() / power.sum() > 1 - 1e-6
    assert power[64].sum() > power[63].sum() + power[65].sum()


def test_moving_subject_energy_leaves_zero_doppler():
    dt = simulate_motion(walk(100, 1.0), "E", CLEAN)["E"]["doppler_time"].astype(np.float64)
    power = dt ** 2
    assert power[63:66].sum() / power.sum() < 0.2


def test_velocities_are_spline_derivatives_not_frame_differences():
    """A wrist swinging at 2 Hz: the spline's derivative is the true velocity
    to ~1 %, the 20-fps central difference is ~6.5 % slow (sin(wh)/(wh))."""
    fps, f = 20.0, 2.0
    t = np.arange(60) / fps
    joints = np.zeros((60, 22, 3))
    joints[:, 20, 2] = 0.3 * np.sin(2 * np.pi * f * t)
    pos, vel = resample(joints, fps, 40.0)
    tr = np.arange(len(pos)) / 40.0
    assert len(pos) == 2 * 60 - 1
    np.testing.assert_allclose(pos[::2], joints, atol=1e-12)     # through the frames
    true = 0.3 * 2 * np.pi * f * np.cos(2 * np.pi * f * tr)
    inner = slice(8, -8)                                         # away from the spline's end conditions
    amp = 0.3 * 2 * np.pi * f
    assert np.abs(vel[inner, 20, 2] - true[inner]).max() < 0.02 * amp
    diff = np.gradient(joints[:, 20, 2], 1 / fps)
    assert np.abs(diff[4:-4] - true[::2][4:-4]).max() > 0.05 * amp


def test_mirrored_clip_gives_mirrored_azimuth():
    """HumanML3D's M copies (x negated, left/right swapped): same range and
    Doppler, azimuth flipped about boresight (bin a -> 128 - a); placement k
    of the mirror is placement -k of the original (B <-> H)."""
    j = walk(100, 0.8, lateral=0.3, raise_left_arm=True)
    orig = simulate_motion(j, "AH", CLEAN)
    mirr = simulate_motion(mirror(j), "AB", CLEAN)
    flip = (128 - np.arange(128)) % 128
    for a, b in (("A", "A"), ("H", "B")):
        np.testing.assert_allclose(mirr[b]["range_time"], orig[a]["range_time"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(mirr[b]["doppler_time"], orig[a]["doppler_time"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(mirr[b]["azimuth_time"], orig[a]["azimuth_time"][flip], rtol=1e-4, atol=1e-6)
    # not trivially symmetric: the original's azimuth map is not its own mirror image
    assert not np.allclose(orig["A"]["azimuth_time"], orig["A"]["azimuth_time"][flip], rtol=1e-2)


def test_placement_c_faces_the_radars_right():
    """C turns the subject 90 degrees CCW: it faces +x, so walking forward moves
    its azimuth energy to the right of boresight (bins above 64) over time."""
    az = simulate_motion(walk(120, 1.0), "C", CLEAN)["C"]["azimuth_time"].astype(np.float64) ** 2
    centroid = (np.arange(128)[:, None] * az).sum(0) / az.sum(0)
    assert centroid[:10].mean() < 64 < centroid[-10:].mean()


def test_hands_and_crown_extend_the_last_bones():
    j = walk(3, 0.0)
    e = extend(j)
    assert e.shape == (3, 25, 3)
    fore = j[:, 20] - j[:, 18]
    np.testing.assert_allclose(e[:, 22] - j[:, 20], 0.08 * fore / np.linalg.norm(fore, axis=-1, keepdims=True))
    assert (e[:, 24, 1] > j[:, 15, 1] + 0.16).all()              # the crown above the head joint


# ------------------------------------------------------------------ the real layout, end to end
def _write_humanml3d(src):
    """Three motions (one with its M mirror), a sub-segment line, a too-short one, split lists."""
    os.makedirs(os.path.join(src, "new_joints"))
    os.makedirs(os.path.join(src, "texts"))
    motions = {"000000": walk(110, 1.0), "M000000": mirror(walk(110, 1.0)), "000001": walk(120, 0.0),
               "000002": walk(140, 0.7, lateral=0.2)}
    texts = {"000000": "a person walks forward.#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0\n"
                       "someone strolls ahead#someone/PRON stroll/VERB ahead/ADV#0.0#0.0\n",
             "M000000": "a person walks forward.#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0\n",
             "000001": "A person stands still.#a/DET person/NOUN stand/VERB still/ADV#0.0#0.0\n",
             "000002": "a man walks and drifts to the left.#a/DET man/NOUN#0.0#0.0\n"
                       "the man walks slowly#the/DET man/NOUN#1.0#6.5\n"
                       "he takes one step#he/PRON#2.0#3.0\n"}
    for cid, j in motions.items():
        np.save(os.path.join(src, "new_joints", f"{cid}.npy"), j.astype(np.float32))
        with open(os.path.join(src, "texts", f"{cid}.txt"), "w") as f:
            f.write(texts[cid])
    for split, ids in (("train", ["000000"]), ("val", ["000001"]), ("test", ["000002"]),
                       ("all", ["000000", "000001", "000002"])):
        with open(os.path.join(src, f"{split}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))


def test_humanml3d_folder_simulated_and_read_end_to_end(tmp_path):
    src, out = str(tmp_path / "HumanML3D"), str(tmp_path / "radar")
    _write_humanml3d(src)
    before = tree(src)
    with pytest.warns(UserWarning, match="short"):
        root = simulate_humanml3d(src, out, placements="AB", layout="both", clutter_points=(0, 0))
    assert tree(src) == before                               # the source is never written into

    splits = {s: json.load(open(os.path.join(root, "_split", f"{s}.json"))) for s in ("train", "val", "test")}
    # training: every placement of the clip and of its (unlisted) mirror; val/test: placement A only
    assert sorted(splits["train"]) == ["000000A", "000000B", "M000000A", "M000000B"]
    assert sorted(splits["val"]) == ["000001A"]
    assert sorted(splits["test"]) == ["000002A", "000002_f20-130A"]   # 1.0..6.5 s at 20 fps
    assert splits["train"]["000000A"]["captions"] == ["a person walks forward", "someone strolls ahead"]
    assert splits["test"]["000002_f20-130A"]["captions"] == ["the man walks slowly"]
    info = json.load(open(os.path.join(root, "data_info.json")))
    assert info["skipped"]["short"] == 1                          # the 1-s segment < min_frames = 40
    meta = json.load(open(os.path.join(root, "meta", "000002_f20-130A.json")))
    assert meta["num_frames"] == 110 and meta["source"]["frames"] == [20, 130]

    # the family's loader, as train_stage1 builds it with --data.generate false
    cfg = tiny_cfg(root, "--data.generate", "false")
    data = fam.build_datasets(cfg)
    assert [len(data[s]) for s in ("train", "val", "test")] == [4, 1, 2]
    item = data["test"][1]
    assert item["range_time"].shape == (256, 224) and item["doppler_time"].shape == (128, 224)
    assert item["azimuth_time"].shape == (128, 224) and int(item["radar_mask"].sum()) == 110
    with np.load(os.path.join(root, "mmwave", "000002_f20-130A.npz")) as z:
        np.testing.assert_allclose(item["doppler_time"][:, :110].numpy(), np.log1p(z["doppler_time"]), rtol=1e-6)
        dop = z["doppler_time"]
    # HumanML3D's own short clips pass the loader once the T range allows them
    short = RadarTextDataset(root, "train", min_motion_len=40, t_range=(40, 500), max_motion_length=224)
    assert len(short) == 4

    # the public mmExpert layout: out is its repository root
    mm = os.path.join(root, "dataset", "HumanML3D")
    udop = np.load(os.path.join(mm, "udoppler", "000002_f20-130A.npy"))
    assert udop.shape == (110, 128) and np.array_equal(udop, dop.T)
    assert sorted(os.listdir(os.path.join(mm, "udoppler_rotation")))[:2] == ["000000A.npy", "000000B.npy"]
    assert len(os.listdir(os.path.join(mm, "udoppler_rotation"))) == 2 * 5   # every clip, both placements
    mm_split = {s: json.load(open(os.path.join(mm, "_split", f"{s}.json"))) for s in ("train", "val", "test", "all")}
    assert list(mm_split["train"]) == ["000000", "000001"]
    assert {e["fileindex"] for e in mm_split["train"].values()} == {"000000", "M000000"}
    assert len(mm_split["all"]) == 5
    for entries in mm_split.values():
        for e in entries.values():
            assert e["filefolder"] == "dataset/HumanML3D/udoppler"
            for letter in "AB":   # mmExpert's random rotation reads udoppler_rotation/{fileindex}{A..H}.npy
                path = os.path.join(root, e["filefolder"] + "_rotation", f"{e['fileindex']}{letter}.npy")
                assert np.load(path).shape[1] == 128


def test_cache_reused_rebuilt_on_changed_source_refuses_foreign_folder(tmp_path):
    src, out = str(tmp_path / "HumanML3D"), str(tmp_path / "radar")
    _write_humanml3d(src)
    kw = dict(placements="A", clutter_points=(0, 0))
    with pytest.warns(UserWarning):
        root = simulate_humanml3d(src, out, **kw)
    npz = os.path.join(root, "mmwave", "000001A.npz")
    stamp = os.stat(npz).st_mtime_ns
    assert simulate_humanml3d(src, out, **kw) == root and os.stat(npz).st_mtime_ns == stamp   # reused
    with open(os.path.join(src, "texts", "000001.txt"), "w") as f:
        f.write("a person waits#a/DET person/NOUN wait/VERB#0.0#0.0\n")
    with pytest.warns(UserWarning):
        simulate_humanml3d(src, out, **kw)                        # the source changed: rebuilt
    assert json.load(open(os.path.join(root, "_split", "val.json")))["000001A"]["captions"] == ["a person waits"]
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserDataError, match="--data.generate false"):
        simulate_humanml3d(src, str(foreign), **kw)
    assert os.listdir(foreign) == ["notes.txt"]
    with pytest.raises(UserDataError, match="inside the HumanML3D folder"):
        simulate_humanml3d(src, os.path.join(src, "radar"), **kw)


def test_two_workers_write_the_same_bytes(tmp_path):
    src = str(tmp_path / "HumanML3D")
    _write_humanml3d(src)
    with pytest.warns(UserWarning):
        one = simulate_humanml3d(src, str(tmp_path / "w1"), workers=1, placements="AB")
        two = simulate_humanml3d(src, str(tmp_path / "w2"), workers=2, placements="AB")
    a, b = tree(one), tree(two)
    a.pop(".structclip-generated.json"), b.pop(".structclip-generated.json")
    a.pop("data_info.json"), b.pop("data_info.json")
    assert a == b and any(k.startswith("mmwave/") for k in a)


@pytest.mark.parametrize("what,match", [
    ("texts", r"000001\.txt:1: 2 '#'-separated fields"),
    ("shape", r"000001\.npy: joints of shape \(120, 21, 3\)"),
    ("split", r"'000001' is listed in val\.txt and test\.txt"),
    ("nosplit", r"\['val\.txt'\] not found"),
])
def test_bad_humanml3d_input_named(tmp_path, what, match):
    src = str(tmp_path / "HumanML3D")
    _write_humanml3d(src)
    if what == "texts":
        open(os.path.join(src, "texts", "000001.txt"), "w").write("a person#tokens only\n")
    elif what == "shape":
        np.save(os.path.join(src, "new_joints", "000001.npy"), np.zeros((120, 21, 3), np.float32))
    elif what == "split":
        open(os.path.join(src, "test.txt"), "a").write("000001\n")
    else:
        os.remove(os.path.join(src, "val.txt"))
    with pytest.raises(UserDataError, match=match):
        simulate_humanml3d(src, str(tmp_path / "out"), placements="A")
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out" )


# ------------------------------------------------------------------ the simulator's motions as HumanML3D
def test_export_sim_motions_match_the_native_clips_and_simulate(tmp_path):
    native = str(tmp_path / "native")
    generate_radar_dataset(native, 2, 1, 1, seed=5)
    exported = export_sim_motions(str(tmp_path / "h3d"), 2, 1, 1, seed=5)
    for cid in ("000000", "000003"):
        assert open(os.path.join(native, "texts", f"{cid}.txt")).read() == \
            open(os.path.join(exported, "texts", f"{cid}.txt")).read()
        with np.load(os.path.join(native, "mmwave", f"{cid}.npz")) as z:
            kin = z["joints"].astype(np.float64)
        h = np.load(os.path.join(exported, "new_joints", f"{cid}.npy"))
        np.testing.assert_allclose(h, kinect_to_humanml3d(kin, JOINTS), atol=1e-5)
        # HumanML3D's canonical frame: floor at 0, root at x = z = 0 and facing +Z at frame 0
        assert abs(h[..., 1].min()) < 1e-6 and np.abs(h[0, 0, [0, 2]]).max() < 1e-6
        across = (h[0, 2] - h[0, 1]) + (h[0, 17] - h[0, 16])
        fwd = np.cross([0, 1, 0], across)
        assert fwd[2] > 0 and abs(fwd[0]) < 1e-5 * np.linalg.norm(fwd)
        # bones keep their lengths (a rigid motion of the native skeleton)
        for a, b, ka, kb in ((1, 4, "hip_l", "knee_l"), (18, 20, "elbow_l", "wrist_l")):
            np.testing.assert_allclose(np.linalg.norm(h[:, a] - h[:, b], axis=-1),
                                       np.linalg.norm(kin[:, JOINTS.index(ka)] - kin[:, JOINTS.index(kb)], axis=-1),
                                       atol=1e-5)
    assert open(os.path.join(exported, "val.txt")).read() == "000002\n"
    main(["--src", exported, "--out", str(tmp_path / "radar"), "--placements", "AC"])
    root = str(tmp_path / "radar")
    info = json.load(open(os.path.join(root, "data_info.json")))
    assert info["actions"] and info["splits"] == {"train": 4, "val": 1, "test": 1}
    native_meta = json.load(open(os.path.join(native, "meta", "000000.json")))
    meta = json.load(open(os.path.join(root, "meta", "000000C.json")))
    assert meta["actions"] == native_meta["actions"]
    assert meta["order_swapped_captions"] == native_meta["order_swapped_captions"]
    ds = TemporalNegatives(RadarTextDataset(root, "train", max_motion_length=224, t_range=None), seed=0)
    assert ds.base.action_names == info["actions"]
    assert all(ds.swapped(i) == json.load(open(ds.base.items[i]["meta"]))["order_swapped_captions"]
               for i in range(len(ds)))


def test_train_stage1_and_eval_on_simulated_humanml3d(tmp_path):
    """The issue's experiment in miniature: the simulator's motions as HumanML3D,
    through the HumanML3D path, trained with --data.generate false and evaluated;
    the temporal-order metric exists because meta/ carried over."""
    src = export_sim_motions(str(tmp_path / "h3d"), 4, 2, 2, seed=3)
    root = simulate_humanml3d(src, str(tmp_path / "radar"), placements="AC")
    before = tree(src)
    logs = tmp_path / "logs"
    train_stage1.main(tiny_args(root, logs) + ["--data.generate", "false", "--max-steps", "1", "--name", "h3d"])
    eval_script.main(["--checkpoint", str(logs / "h3d" / "checkpoints" / "latest.pt"), "--out", str(tmp_path / "eval")])
    m = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert m["t2r_chance_R@10"] == 1.0                           # 2 test motions, placement A only
    assert m["temporal_order_pairs"] == sum(
        len(json.load(open(os.path.join(root, "meta", f"{k}.json")))["order_swapped_captions"])
        for k in json.load(open(os.path.join(root, "_split", "test.json"))))
    assert 0.0 <= m["t2r_R@1"] <= 1.0 and 0.0 <= m["temporal_order_acc"] <= 1.0
    assert tree(src) == before


def test_cli_export_sim_then_simulate(tmp_path, capsys):
    out, radar = str(tmp_path / "h3d"), str(tmp_path / "radar")
    main(["--export-sim", "5", "--out", out, "--seed", "2"])
    ids = {s: open(os.path.join(out, f"{s}.txt")).read().split() for s in ("train", "val", "test", "all")}
    assert ids == {"train": ["000000", "000001", "000002"], "val": ["000003"], "test": ["000004"],
                   "all": [f"{i:06d}" for i in range(5)]}
    assert sorted(os.listdir(os.path.join(out, "new_joints")))[0] == "000000.npy"
    main(["--src", out, "--out", radar, "--placements", "AE", "--layout", "mmexpert"])
    assert "radar clips from {'train': 3, 'val': 1, 'test': 1} motions" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(radar, "mmwave"))     # the mmExpert layout only
    assert len(os.listdir(os.path.join(radar, "dataset", "HumanML3D", "udoppler_rotation"))) == 5 * 2
    with pytest.raises(SystemExit):
        main(["--export-sim", "2", "--out", str(tmp_path / "x")])   # nothing left for training


def test_mirror_listed_elsewhere_follows_its_original_empty_captions_skipped(tmp_path):
    src, out = str(tmp_path / "HumanML3D"), str(tmp_path / "radar")
    _write_humanml3d(src)
    open(os.path.join(src, "test.txt"), "a").write("M000000\n")          # a leak if honoured
    open(os.path.join(src, "texts", "000001.txt"), "a").write(".#empty/X#0.0#0.0\n")
    with pytest.warns(UserWarning) as caught:
        root = simulate_humanml3d(src, out, placements="A", clutter_points=(0, 0))
    messages = " ".join(str(w.message) for w in caught)
    assert "mirrored M-ids listed in another split" in messages and "'empty_caption': 1" in messages
    splits = {s: json.load(open(os.path.join(root, "_split", f"{s}.json"))) for s in ("train", "val", "test")}
    assert "M000000A" in splits["train"] and not any(k.startswith("M") for k in splits["test"])
    assert splits["val"]["000001A"]["captions"] == ["a person stands still"]
    skipped = json.load(open(os.path.join(root, "data_info.json")))["skipped"]
    assert skipped["mirror_moved"] == 1 and skipped["empty_caption"] == 1


def test_float16_maps_load_as_the_float32_ones(tmp_path):
    src = str(tmp_path / "HumanML3D")
    _write_humanml3d(src)
    kw = dict(placements="A", clutter_points=(0, 0))
    with pytest.warns(UserWarning):
        full = simulate_humanml3d(src, str(tmp_path / "f32"), **kw)
        half = simulate_humanml3d(src, str(tmp_path / "f16"), dtype="float16", **kw)
    a = RadarTextDataset(full, "test", max_motion_length=224, train=False)
    b = RadarTextDataset(half, "test", max_motion_length=224, train=False)
    with np.load(os.path.join(half, "mmwave", "000002A.npz")) as z:
        assert z["range_time"].dtype == np.float16
    for k in ("range_time", "doppler_time", "azimuth_time"):
        np.testing.assert_allclose(b[0][k].numpy(), a[0][k].numpy(), atol=2e-3)
