"""Radar data: simulator physics, on-disk format round trip, loader options and errors."""
import json
import multiprocessing as mp
import os
import warnings

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import families.radar as fam
from data.cache import UserDataError, read_marker
from data.radar.actions import ACTION_NAMES, ACTIONS
from data.radar.dataset import RadarDataError, RadarTextDataset, collate_radar
from data.radar.fmcw import RadarConfig, array_kernel_power, hann_kernel_power, kernel_map, radar_maps
from data.radar.motion import forward_kinematics, sample_body
from data.radar.sim import GENERATOR_DEFAULTS, body_scatterers, ensure_radar_dataset, generate_radar_dataset
from data.radar.temporal import TemporalNegatives
from tests.radar_tiny import tiny_cfg

CFG = RadarConfig()


def point_target(r, v, theta_deg, height=CFG.height, frames=4, rcs=1.0):
    th = np.deg2rad(theta_deg)
    los = np.array([np.sin(th), np.cos(th), 0.0])
    pos = np.broadcast_to(np.array([0, 0, height]) + r * los, (frames, 1, 3)).copy()
    vel = np.broadcast_to(v * los, (frames, 1, 3)).copy()
    return pos, vel, np.full((frames, 1), rcs)


# ------------------------------------------------------------------ physics
@pytest.mark.parametrize("r,v,theta", [(1.7, 0.0, 0.0), (3.0, 1.5, 20.0), (5.3, -2.2, -35.0),
                                       (8.9, 4.1, 48.0), (2.2, -0.35, -10.0)])
def test_point_target_peaks_at_analytic_bins(r, v, theta):
    rt, dt, at = radar_maps(*point_target(r, v, theta), CFG)
    # Analytic bins from the radar parameters, not from the code under test.
    c, f0, slope, fs, n = 299_792_458.0, 77e9, 70e12, 5.209e6, 256
    range_res = c / (2 * slope * n / fs)
    vel_res = (c / f0) / (2 * 0.02)                   # lambda / (2 * 128 chirps * T_c), 128 T_c = 20 ms
    assert rt.shape == (256, 4) and dt.shape == (128, 4) and at.shape == (128, 4)
    assert abs(range_res - 0.04357) < 1e-4 and abs(vel_res - 0.0973) < 1e-3
    for t in range(4):
        assert rt[:, t].argmax() == round(r / range_res)
        assert dt[:, t].argmax() == round(64 + v / vel_res)
        assert at[:, t].argmax() == round(64 + 64 * np.sin(np.deg2rad(theta)))


def test_maps_equal_ffts_of_a_brute_force_if_cube():
    """The analytic maps have the shape of the FFT pipeline run on the raw IF
    signal of a point target: fast time x chirps x 8 virtual antennas."""
    r, v, theta = 3.3, 1.1, np.deg2rad(25)
    c, lam, slope, fs = 299_792_458.0, 299_792_458.0 / 77e9, 70e12, 5.209e6
    n, chirps, ants, t_c = 256, 128, 8, 0.02 / 128
    phase = (2 * np.pi * slope * 2 * r / c * np.arange(n)[:, None, None] / fs      # beat frequency
             + 4 * np.pi * v * t_c / lam * np.arange(chirps)[None, :, None]       # Doppler per chirp
             + np.pi * np.sin(theta) * np.arange(ants)[None, None, :])            # lambda/2 array
    cube = np.exp(1j * phase)                                                      # [N, C, A]
    hann = lambda m: 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(m) / m)               # periodic Hann
    win_r, win_d = hann(n)[:, None, None], hann(chirps)[None, :, None]
    rfft = np.fft.fft(cube * win_r, axis=0)
    brute_range = np.abs(rfft).mean((1, 2))
    rd = np.fft.fftshift(np.fft.fft(rfft * win_d, axis=1), axes=1)
    brute_doppler = np.abs(rd).mean((0, 2))
    brute_azimuth = np.abs(np.fft.fftshift(np.fft.fft(rd, n=128, axis=2), axes=2)).mean((0, 1))
    pos = np.array([[[r * np.sin(theta), r * np.cos(theta), CFG.height]]])
    vel = v * np.array([[[np.sin(theta), np.cos(theta), 0.0]]])
    ours = radar_maps(pos, vel, np.ones((1, 1)), CFG)
    for mine, brute in zip(ours, (brute_range, brute_doppler, brute_azimuth)):
        np.testing.assert_allclose(mine[:, 0] / mine.max(), brute / brute.max(), atol=0.01)


def test_velocity_beyond_vmax_aliases():
    v = CFG.max_velocity + 1.0                         # 7.2 m/s wraps to the negative side
    _, dt, _ = radar_maps(*point_target(3.0, v, 0.0), CFG)
    assert dt[:, 0].argmax() == round((64 + v / CFG.velocity_res) % 128)
    assert dt[:, 0].argmax() < 64


def test_amplitude_follows_radar_equation():
    """Peak amplitude ~ sqrt(RCS) / R^2: twice the range -> 1/4, 4x the RCS -> 2x."""
    near = radar_maps(*point_target(2.0, 0.0, 0.0), CFG)[0].max()
    far = radar_maps(*point_target(4.0, 0.0, 0.0), CFG)[0].max()
    big = radar_maps(*point_target(2.0, 0.0, 0.0, rcs=4.0), CFG)[0].max()
    assert far / near == pytest.approx(0.25, rel=0.02)
    assert big / near == pytest.approx(2.0, rel=1e-4)


def test_fast_kernel_map_equals_direct_sum():
    rng = np.random.default_rng(0)
    bins, power = rng.uniform(0, 128, (3, 7)), rng.uniform(0.1, 1, (3, 7))
    k = np.arange(128)
    for kind, kernel in (("hann", lambda d: hann_kernel_power(d, 128)),
                         ("array", lambda d: array_kernel_power(d, 8, 128))):
        fast = kernel_map(bins, power, 128, kind, wrap=True, n_elem=8)
        delta = np.mod(k[:, None, None] - bins[None] + 64, 128) - 64          # [K, T, P]
        direct = (kernel(delta) * power[None]).sum(-1)
        np.testing.assert_allclose(fast, direct, atol=0.02 * direct.max())


def _simulate(action, params, state, rng=None, noise=0.0):
    rng = np.random.default_rng(1) if rng is None else rng
    body = sample_body(rng)
    if params is None:                                   # draw the action's own parameters
        while params is None:
            params = ACTIONS[action][0](rng, state, body)
    t = np.arange(int(params["duration"] * 100)) / 100
    pose, _ = ACTIONS[action][1](t, body, state, params)
    fine = forward_kinematics(pose, body)
    joints, vel = fine[::5], np.gradient(fine, 0.01, axis=0)[::5]
    pos, v, rcs = body_scatterers(joints, vel, 4, np.array([0, 0, CFG.height]))
    with threadpool_limits(limits=1, user_api="blas"):      # as in the generator's workers
        return radar_maps(pos, v, rcs, CFG, noise_power=noise, gain=1000.0, rng=rng)


def _centroid(m):  # energy-weighted mean bin per frame [T]
    return (m ** 2 * np.arange(m.shape[0])[:, None]).sum(0) / (m ** 2).sum(0)


def test_walking_signatures_visible_in_the_maps():
    """Walking towards the radar: range falls and Doppler sits below zero
    velocity; walking left: the azimuth bin falls."""
    start = {"posture": "standing", "x": 0.0, "y": 5.0, "heading": np.pi}
    rt, dt, _ = _simulate("walk", {"direction": "towards", "speed": 1.2, "duration": 2.5}, start)
    rc = _centroid(rt)
    assert rc[-1] < rc[0] - 2.0 / CFG.range_res * 0.8      # ~2.6 m closer
    moving = dt[:, 15:35]
    assert _centroid(moving).mean() < 64 - 0.5 / CFG.velocity_res
    _, _, at = _simulate("walk", {"direction": "left", "speed": 1.2, "duration": 2.5}, start)
    ac = _centroid(at)
    assert ac[-1] < ac[0] - 10


def test_actions_are_distinguishable_from_the_radar():
    """Nearest class centroid (leave one out) on position-invariant radar
    features -- the Doppler profile's mean and spread over time and the range
    span -- recognises the 14 actions of 4 random subjects far above chance."""
    feats, labels = [], []
    for subject in range(4):
        for label, name in enumerate(ACTION_NAMES):
            rng = np.random.default_rng([subject, label])
            r0, az = rng.uniform(2.5, 4.5), rng.uniform(-0.4, 0.4)
            state = {"posture": "sitting" if name == "stand up" else "standing",
                     "x": r0 * np.sin(az), "y": r0 * np.cos(az), "heading": np.pi + rng.uniform(-0.4, 0.4)}
            rt, dt, _ = _simulate(name, None, state, rng, noise=1e-6)
            d, r = np.log1p(dt), np.log1p(rt)
            feats.append(np.concatenate([d.mean(1), d.std(1), [np.ptp(_centroid(r))]]))
            labels.append(label)
    x, y = np.array(feats), np.array(labels)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    correct = 0
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        centroids = np.stack([x[rest & (y == c)].mean(0) for c in range(len(ACTION_NAMES))])
        correct += int(np.argmin(((centroids - x[i]) ** 2).sum(1)) == y[i])
    assert correct / len(y) > 5 / len(ACTION_NAMES)       # chance is 1/14


# ------------------------------------------------------------- round trip
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("radar"))
    ensure_radar_dataset(root, 6, 3, 4, seed=3, workers=1)
    return root


def test_round_trip_format_and_loader(generated):
    root = generated
    with open(os.path.join(root, "data_info.json")) as f:
        info = json.load(f)
    assert len(info["actions"]) >= 12 and set(info["action_prompts"]) == set(info["actions"])
    keys = {}
    for split in ("train", "val", "test"):
        with open(os.path.join(root, "_split", f"{split}.json")) as f:
            keys[split] = json.load(f)
    assert [len(keys[s]) for s in ("train", "val", "test")] == [6, 3, 4]
    assert not (set(keys["train"]) & set(keys["val"]) or set(keys["train"]) & set(keys["test"])
                or set(keys["val"]) & set(keys["test"]))
    for cid, e in keys["val"].items():
        assert e["fileindex"] == cid and len(e["captions"]) >= 2
        lines = open(os.path.join(root, "texts", f"{cid}.txt")).read().splitlines()
        assert all(len(line.split("#")) == 4 for line in lines)
        with np.load(os.path.join(root, "mmwave", f"{cid}.npz")) as z:
            t = z["range_time"].shape[1]
            assert z["doppler_time"].shape == (128, t) and z["azimuth_time"].shape == (128, t)
            assert z["range_time"].dtype == np.float32 and 100 <= t < 500

    test = RadarTextDataset(root, "test", train=False)
    val = RadarTextDataset(root, "val", train=False)
    assert {it["key"] for it in val.items}.isdisjoint({it["key"] for it in test.items})
    assert not torch.equal(val[0]["doppler_time"], test[0]["doppler_time"])
    for i in range(len(test)):
        item, meta = test[i], test.clip_meta(i)
        n = item["radar_mask"].sum().item()
        assert n == min(test.items[i]["T"], 496) and not item["radar_mask"][n:].any()
        assert item["range_time"].shape == (256, 496) and (item["range_time"][:, n:] == 0).all()
        assert item["caption"] == item["captions"][0] and item["caption"] == item["caption"].lower()
        assert not item["caption"].endswith(".") and len(item["caption"].split()) <= 20
        assert item["actions"] == [a["name"] for a in meta["actions"]]
        assert item["label"] == ACTION_NAMES.index(item["actions"][0])
        assert meta["captions"] == item["captions"]
        swapped = meta["order_swapped_captions"]
        if item["num_actions"] > 1:   # aligned: same template and phrases, other order
            assert len(swapped) == len(item["captions"])
            for cap, sw in zip(item["captions"], swapped):
                assert cap != sw and len(cap.split()) == len(sw.split())
        else:
            assert swapped == []
    batch = collate_radar([test[0], test[1]])
    assert batch["doppler_time"].shape == (2, 128, 496) and batch["label"].dtype == torch.long
    assert isinstance(batch["captions"][0], list)


def test_views_selection_and_normalisation(generated):
    only = RadarTextDataset(generated, "val", radar_views="doppler", train=False)[0]
    assert "doppler_time" in only and "range_time" not in only and "azimuth_time" not in only
    raw = RadarTextDataset(generated, "val", log_norm=False, train=False)[0]
    n = raw["radar_mask"].sum()
    for key in ("range_time", "doppler_time", "azimuth_time"):
        assert raw[key][:, :n].min() == 0 and raw[key][:, :n].max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="radar_views"):
        RadarTextDataset(generated, "val", radar_views="elevation")


def test_generation_is_deterministic_and_cached_by_every_parameter(generated, tmp_path):
    root = str(tmp_path / "copy")
    assert ensure_radar_dataset(root, 6, 3, 4, seed=3, workers=2) == root   # 2 workers, same bytes
    for sub in ("mmwave/000007.npz", "texts/000007.txt", "meta/000007.json", "_split/test.json"):
        assert open(os.path.join(root, sub), "rb").read() == open(os.path.join(generated, sub), "rb").read()
    clip = os.path.join(root, "mmwave", "000003.npz")
    stamp = lambda: (os.stat(clip).st_ino, os.stat(clip).st_mtime_ns)  # noqa: E731
    before, data = stamp(), open(clip, "rb").read()
    ensure_radar_dataset(root, 6, 3, 4, seed=3)                            # cached: not rebuilt
    assert stamp() == before
    # The marker holds every generator parameter, so changing any of them rebuilds.
    params = read_marker(root)["params"]
    # (captions="template", the default, is left out: the marker of data from before the key existed)
    assert set(params) == set(GENERATOR_DEFAULTS) - {"captions"} | {"num_train", "num_val", "num_test",
                                                                    "seed", "format_version"}
    text = open(os.path.join(root, "texts", "000003.txt")).read()
    ensure_radar_dataset(root, 6, 3, 4, seed=3, captions="diverse")      # other captions, same clips
    assert read_marker(root)["params"]["captions"] == "diverse" and open(clip, "rb").read() == data
    assert open(os.path.join(root, "texts", "000003.txt")).read() != text
    ensure_radar_dataset(root, 6, 3, 4, seed=3, noise_looks=8)           # other noise: other maps
    assert open(clip, "rb").read() != data and read_marker(root)["params"]["noise_looks"] == 8
    ensure_radar_dataset(root, 2, 1, 1, seed=4)                            # other sizes: new data
    assert len(os.listdir(os.path.join(root, "mmwave"))) == 4
    assert not [n for n in os.listdir(root) if n.startswith(".building")]
    with pytest.raises(ValueError, match="unknown parameters"):
        ensure_radar_dataset(root, 1, 1, 1, bogus=3)


def test_relative_root_resolves_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ensure_radar_dataset("rel/radar", 1, 1, 1, seed=2) == str(tmp_path / "rel" / "radar")
    assert len(RadarTextDataset(str(tmp_path / "rel" / "radar"), "test")) == 1


def _ensure_in_child(root, queue):
    queue.put(ensure_radar_dataset(root, 2, 1, 1, seed=5))


def test_concurrent_runs_share_one_dataset(tmp_path):
    """Two runs (e.g. two seeds) starting together: one generates, the other waits and reuses."""
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    root, queue = str(tmp_path / "shared"), ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=(root, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [queue.get() for _ in procs] == [root, root]
    assert len(RadarTextDataset(root, "train")) == 2
    assert not [n for n in os.listdir(root) if n.startswith(".building")]


def test_refuses_to_overwrite_real_data(tmp_path):
    root = _write_fake(tmp_path, {"a": 120})
    with pytest.raises(UserDataError, match=r"real.*--data.generate false"):
        ensure_radar_dataset(root, 1, 1, 1)
    assert sorted(os.listdir(root)) == ["_split", "mmwave"]


# ------------------------------------------------------ real-format files
def _write_fake(tmp_path, clips, split="train", arrays=None):
    """mmExpert-format folder without meta/ or data_info.json (like real data).
    clips: {id: T}; each view holds the frame index t + 1 in every bin."""
    root = str(tmp_path / "real")
    os.makedirs(os.path.join(root, "mmwave"), exist_ok=True)
    os.makedirs(os.path.join(root, "_split"), exist_ok=True)
    entries = {}
    for cid, t in clips.items():
        frame = np.arange(1, t + 1, dtype=np.float32)
        maps = {k: np.broadcast_to(frame, (n, t)).copy()
                for k, n in (("range_time", 256), ("doppler_time", 128), ("azimuth_time", 128))}
        maps.update((arrays or {}).get(cid, {}))
        np.savez(os.path.join(root, "mmwave", f"{cid}.npz"), **maps)
        entries[cid] = {"filefolder": ".", "fileindex": cid, "captions": [f"A person does {cid}.#x/X#0.0#0.0"]}
    with open(os.path.join(root, "_split", f"{split}.json"), "w") as f:
        json.dump(entries, f)
    return root


def test_one_crop_offset_shared_by_all_views(tmp_path):
    root = _write_fake(tmp_path, {"a": 300, "b": 137})
    ds = RadarTextDataset(root, "train", max_motion_length=128, log_norm=False, train=True)
    raw = RadarTextDataset(root, "train", max_motion_length=128, train=True)
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            n = item["radar_mask"].sum().item()
            assert n % 16 == 0 and n == 128
            # min-max keeps a linear ramp: the views agree frame by frame iff the offset is shared
            first = [item[k][0, :n] for k in ("range_time", "doppler_time", "azimuth_time")]
            assert torch.allclose(first[0], first[1]) and torch.allclose(first[0], first[2])
            raw.set_epoch(epoch)
            starts.add((i, round(np.expm1(raw[i]["range_time"][0, 0].item()))))
    assert len(starts) > 4                                    # the offset is random...
    ds.set_epoch(2)
    assert torch.equal(ds[0]["range_time"], ds[0]["range_time"])   # ...and reproducible
    item = ds[0]
    assert item["label"] == -1 and item["actions"] == [] and item["caption"] == "a person does a"


@pytest.mark.parametrize("bad,match", [
    ({"doppler_time": None}, "missing key 'doppler_time'"),
    ({"azimuth_time": np.zeros((64, 120), np.float32)}, r"shape \(64, 120\); expected \(128, T\)"),
    ({"range_time": np.zeros((256, 130), np.float32)}, "expected the same number of frames"),
])
def test_bad_files_raise_clear_errors(tmp_path, bad, match):
    arrays = {k: v for k, v in bad.items() if v is not None}
    root = _write_fake(tmp_path, {"x": 120}, arrays={"x": arrays})
    if any(v is None for v in bad.values()):
        path = os.path.join(root, "mmwave", "x.npz")
        with np.load(path) as z:
            kept = {k: z[k] for k in z.files if k not in bad}
        np.savez(path, **kept)
    with pytest.raises(RadarDataError, match=match) as e:
        RadarTextDataset(root, "train")
    assert "x.npz" in str(e.value)


def test_nan_and_length_errors_and_filtering(tmp_path):
    nan = np.ones((128, 150), np.float32)
    nan[3, 7] = np.nan
    root = _write_fake(tmp_path, {"ok": 150, "nan": 150, "short": 90},
                       arrays={"nan": {"doppler_time": nan}})
    with pytest.raises(RadarDataError, match=r"short.npz: T=90 frames; expected 100 <= T < 500"):
        RadarTextDataset(root, "train")
    with pytest.warns(UserWarning, match="dropped 1 clips shorter than min_motion_len=96"):
        ds = RadarTextDataset(root, "train", t_range=None)
    idx = [it["key"] for it in ds.items].index("nan")
    with pytest.raises(RadarDataError, match="nan.npz: key 'doppler_time' has non-finite values"):
        ds[idx]
    with pytest.warns(UserWarning, match="dropped 2 clips"):
        kept = RadarTextDataset(root, "train", filter_invalid=True)
    assert [it["key"] for it in kept.items] == ["ok"]


def test_generated_clip_corrupted_after_generation(tmp_path):
    """Generated data takes T from meta/ (fast start); the clip is still checked when loaded."""
    root = str(tmp_path / "gen")
    generate_radar_dataset(root, 2, 1, 1, seed=9)
    path = os.path.join(root, "mmwave", "000001.npz")
    with np.load(path) as z:
        good = {k: z[k] for k in z.files}
    t = good["range_time"].shape[1]
    np.savez(path, **dict(good, azimuth_time=np.zeros((100, t), np.float32)))
    ds = RadarTextDataset(root, "train", train=False)
    ds[0]
    with pytest.raises(RadarDataError, match=r"000001.npz: key 'azimuth_time' has shape \(100, \d+\)"):
        ds[1]
    np.savez(path, **{k: v[:, :t - 3] if v.ndim == 2 else v for k, v in good.items()})
    with pytest.raises(RadarDataError, match=f"000001.npz: {t - 3} frames but its meta/ file says num_frames={t}"):
        ds[1]
    os.remove(path)
    with pytest.raises(RadarDataError, match="000001.npz: file not found"):
        RadarTextDataset(root, "train")


def test_missing_split_and_missing_file(tmp_path):
    root = _write_fake(tmp_path, {"a": 120})
    with pytest.raises(FileNotFoundError, match=r"_split/test.json: split file not found"):
        RadarTextDataset(root, "test")
    os.remove(os.path.join(root, "mmwave", "a.npz"))
    with pytest.raises(RadarDataError, match="a.npz: file not found"):
        RadarTextDataset(root, "train")


# ------------------------------------------------------ temporal negatives
class _Clips:
    """A RadarTextDataset stand-in: items with captions and a meta dict each."""

    def __init__(self, clips):
        self.clips = clips  # [(captions, swapped or None (no meta field), num_actions)]
        self.items = [{"captions": c, "meta": f"meta/{i}.json", "actions": ["a"] * n}
                      for i, (c, _, n) in enumerate(clips)]
        self.epoch = 0

    def __len__(self):
        return len(self.clips)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def clip_meta(self, i):
        swapped = self.clips[i][1]
        return {} if swapped is None else {"order_swapped_captions": swapped}

    def __getitem__(self, i):
        caps = self.clips[i][0]
        return {"radar_mask": torch.ones(4, dtype=torch.bool), "captions": list(caps),
                "caption": caps[(i + self.epoch) % len(caps)], "clip_id": str(i), "label": 0,
                "actions": self.items[i]["actions"], "num_actions": len(self.items[i]["actions"])}


def test_temporal_negatives_serve_the_index_aligned_swap():
    base = _Clips([
        (["walks then jumps", "walking, then jumping"], ["jumps then walks", "jumping, then walking"], 2),
        (["sits"], [], 1),                                  # one action: no swap
        (["waves"], None, 1),                               # real data: no meta at all
        (["a then b", "b after a", "first a then b"], ["b then a"], 2),   # lists not parallel
    ])
    ds = TemporalNegatives(base, seed=3)
    ds.set_epoch(0)
    assert base.epoch == 0
    assert ds[0]["swapped_caption"] == "jumps then walks" and ds[0]["has_swap"] is True
    ds.set_epoch(1)                                          # the base now serves caption 1
    assert base.epoch == 1 and ds[0]["caption"] == "walking, then jumping"
    assert ds[0]["swapped_caption"] == "jumping, then walking"
    for i in (1, 2):                                         # their own caption, skipped by the loss
        assert ds[i]["swapped_caption"] == ds[i]["caption"] and ds[i]["has_swap"] is False
    assert ds[3]["swapped_caption"] == "b then a" and ds[3]["has_swap"] is True
    batch = collate_radar([ds[i] for i in range(4)])
    assert batch["has_swap"].dtype == torch.bool and batch["has_swap"].tolist() == [True, False, False, True]
    assert batch["swapped_caption"][0] == "jumping, then walking"
    assert batch["label"].dtype == torch.long


def test_temporal_negatives_pick_reproducibly_when_lists_are_not_parallel():
    swaps = [f"s{k}" for k in range(5)]
    base = _Clips([(["c0", "c1"], swaps, 2)] * 3)
    ds = TemporalNegatives(base, seed=0)
    picks = {(e, i): None for e in range(4) for i in range(3)}
    for e, i in picks:
        ds.set_epoch(e)
        picks[e, i] = ds[i]["swapped_caption"]
        assert ds[i]["swapped_caption"] == picks[e, i]      # same (epoch, index): same pick
    assert set(picks.values()) <= set(swaps) and len(set(picks.values())) > 1


def test_bad_swapped_captions_field_names_the_file():
    base = _Clips([(["c"], "not a list", 2)])
    with pytest.raises(ValueError, match=r"meta/0.json: field 'order_swapped_captions' must be a list"):
        TemporalNegatives(base)[0]


def test_family_never_writes_into_a_users_folder(tmp_path):
    root = _write_fake(tmp_path, {"a": 120})
    before = sorted(os.listdir(root))
    with pytest.raises(UserDataError, match="--data.generate false"):
        fam.prepare_data(tiny_cfg(root))
    fam.prepare_data(tiny_cfg(root, "--data.generate", "false"))    # real data: used as it is
    assert sorted(os.listdir(root)) == before
    assert len(RadarTextDataset(root, "train")) == 1
    with pytest.raises(UserDataError, match="no such folder"):
        fam.prepare_data(tiny_cfg(tmp_path / "missing", "--data.generate", "false"))


@pytest.mark.parametrize("log_norm", [True, False])
def test_memory_cache_gives_the_same_items(generated, log_norm):
    """Clips kept in memory after their first read give the items a fresh read
    gives, every epoch's crops included, and the budget is kept."""
    cached = RadarTextDataset(generated, "train", log_norm=log_norm, train=True)
    disk = RadarTextDataset(generated, "train", log_norm=log_norm, train=True, memory_cache_mb=0)
    for epoch in range(3):
        cached.set_epoch(epoch), disk.set_epoch(epoch)
        for i in range(len(cached)):
            a, b = cached[i], disk[i]
            for k in ("range_time", "doppler_time", "azimuth_time", "radar_mask"):
                assert torch.equal(a[k], b[k]), (epoch, i, k)
    assert len(cached._memory) == len(cached) and not disk._memory
    one = next(iter(cached._memory.values()))
    size = sum(v.nbytes for v in one.values())
    small = RadarTextDataset(generated, "train", log_norm=log_norm, train=True,
                             memory_cache_mb=2.5 * size / 2**20)
    for i in range(len(small)):
        small[i]
    assert 1 <= len(small._memory) < len(small) and small._memory_bytes <= 2.5 * size
