"""sCLAP data: FOA encoding direction, manifest round trip, real neg_t / neg_s
audio, clear errors for bad input."""
import csv
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from scipy.io import wavfile

import families.sclap as fam
from data.cache import UserDataError
from data.sclap.audio_io import AudioFileError, read_foa
from data.sclap.dataset import STClothoDataset, collate
from data.sclap.manifest import ManifestError, read_manifest
from data.sclap.generate import MANIFEST, MANIFEST_COLUMNS, generate
from data.sclap.spatial import Room, direction_vector, foa_encode, sector_of
from models.sclap.classical_doa import angular_error_deg, block_intensity, estimate_two_doas
from models.sclap.frontend import SpatialFrontEnd
from training.config import load_config

SR = 16000
GEN = dict(num_train=3, num_val=2, num_test=2, num_zeroshot=2, gen_seed=1, sample_rate=SR,
           clip_seconds=4.0, event_seconds=[1.0, 1.8], max_elevation=45.0, max_order=6, snr_db=[20, 30])
FE = dict(sample_rate=SR, clip_seconds=4.0, n_fft=1024, hop_length=640, n_mels=32, f_min=20.0, f_max=8000.0)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("stclotho")
    generate(dict(GEN, dir=str(d)), workers=1)
    return str(d)


def _angle(u, v):
    return np.degrees(np.arccos(np.clip(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))


@pytest.mark.parametrize("azi,ele", [(0, 0), (90, 0), (200, 30), (315, -40), (135, 10)])
def test_intensity_vector_points_to_source(azi, ele):
    s = np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    foa = foa_encode(s, azi, ele)                                    # [4, n], ACN W Y Z X
    np.testing.assert_allclose(foa[1], s * np.sin(np.radians(azi)) * np.cos(np.radians(ele)), atol=1e-6)
    _, iv = SpatialFrontEnd(**{k: v for k, v in FE.items() if k != "clip_seconds"})(
        torch.from_numpy(foa[None]).float())
    mean_iv = iv[0].mean(dim=(1, 2)).numpy()                         # [3] (x, y, z)
    assert _angle(mean_iv, direction_vector(azi, ele)) < 1.0
    # the classical estimator's intensity agrees
    assert _angle(block_intensity(foa, SR).sum(0), direction_vector(azi, ele)) < 1.0


def test_reverberant_render_keeps_direction():
    rng = np.random.default_rng(3)
    room = Room(rng, SR, max_order=6)
    s = rng.standard_normal(SR)
    for azi, ele in [(30, 0), (250, 20)]:
        foa = room.render(s, azi, ele, 1.2)
        est = block_intensity(foa, SR).sum(0)
        assert _angle(est, direction_vector(azi, ele)) < 20.0    # reflections bias, but not by much
        assert sector_of(np.degrees(np.arctan2(est[1], est[0]))) in {sector_of(azi), (sector_of(azi) + 1) % 8,
                                                                     (sector_of(azi) - 1) % 8}


def test_manifest_round_trip(dataset_dir):
    rows = read_manifest(dataset_dir)
    assert len(rows) == 3 * (3 + 2 + 2) + 2
    with open(os.path.join(dataset_dir, MANIFEST), newline="") as f:
        raw = list(csv.DictReader(f))
    for r, w in zip(rows, raw):
        assert r["file_name"] == w["file_name"] and r["caption"] == w["caption"]
        assert r["event1_azimuth"] == pytest.approx(float(w["event1_azimuth"]))
        x = read_foa(os.path.join(dataset_dir, r["file_name"]), SR, 4.0)
        assert x.shape == (4, 4 * SR) and np.abs(x).max() > 0.1
    ds = STClothoDataset(dataset_dir, "train", FE)
    assert len(ds) == 3
    item = ds[1]
    assert item["feats"].shape == (3, 7, 101, 32)
    pos = [r for r in rows if r["item_id"] == "train_00001" and r["variant"] == "pos"][0]
    np.testing.assert_allclose(item["doa"][0, 0].numpy(),
                               direction_vector(pos["event1_azimuth"], pos["event1_elevation"]), atol=1e-5)
    assert item["captions"][0] == pos["caption"]
    batch = collate([ds[0], ds[1]])
    assert batch["feats"].shape[:2] == (2, 3) and len(batch["captions"]) == 6
    # pos and neg_s share their plain caption (same events, same order): same id
    assert (batch["plain_ids"][:, 0] == batch["plain_ids"][:, 2]).all()
    assert (batch["caption_ids"][:, 0] != batch["caption_ids"][:, 2]).all()
    test = STClothoDataset(dataset_dir, "test", FE, with_single=True)
    assert len(test) == 2 and len(test.singles) == 2 and test.single_feats.shape[0] == 2


def test_negatives_swap_order_and_direction(dataset_dir):
    rows = read_manifest(dataset_dir)
    for item_id in ("train_00000", "train_00001", "train_00002", "val_00000"):
        v = {r["variant"]: r for r in rows if r["item_id"] == item_id}
        p, t, s = v["pos"], v["neg_t"], v["neg_s"]
        # labels: neg_t = B then A with the same directions; neg_s = A then B from other sectors
        assert (t["event1_class"], t["event2_class"]) == (p["event2_class"], p["event1_class"])
        assert (t["event1_azimuth"], t["event2_azimuth"]) == (p["event2_azimuth"], p["event1_azimuth"])
        assert (s["event1_class"], s["event2_class"]) == (p["event1_class"], p["event2_class"])
        assert sector_of(s["event1_azimuth"]) != sector_of(p["event1_azimuth"])
        assert sector_of(s["event2_azimuth"]) != sector_of(p["event2_azimuth"])
        assert p["caption"] != t["caption"] != s["caption"] != p["caption"]
        # audio: the direction measured in each half of each clip is the labelled one
        for r in (p, t, s):
            x = read_foa(os.path.join(dataset_dir, r["file_name"]), SR, 4.0)
            halves = [block_intensity(x[:, h * 2 * SR:(h + 1) * 2 * SR], SR).sum(0) for h in (0, 1)]
            measured = np.stack(halves)[None]                      # [1, 2, 3] in time order
            labelled = np.stack([direction_vector(r[f"event{e}_azimuth"], r[f"event{e}_elevation"])
                                 for e in (1, 2)])[None]
            in_order = np.degrees(np.arccos(np.clip(
                (measured / np.linalg.norm(measured, axis=-1, keepdims=True) * labelled).sum(-1), -1, 1)))
            assert in_order.max() < 30.0, (r["file_name"], in_order)
        # and the W-channel signal of A in pos slot 0 reappears in neg_t slot 1
        xp = read_foa(os.path.join(dataset_dir, p["file_name"]), SR, 4.0)[0, :2 * SR]
        xt = read_foa(os.path.join(dataset_dir, t["file_name"]), SR, 4.0)[0, 2 * SR:]
        assert np.corrcoef(xp, xt)[0, 1] > 0.6


def _write_manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_bad_input_errors(dataset_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(str(tmp_path))
    with open(os.path.join(dataset_dir, MANIFEST), newline="") as f:
        rows = list(csv.DictReader(f))
    # missing column
    _write_manifest(tmp_path / MANIFEST, [{k: v for k, v in r.items() if k != "event1_azimuth"} for r in rows])
    with pytest.raises(ManifestError, match="missing column.*event1_azimuth"):
        read_manifest(str(tmp_path))
    # non-numeric angle, named by line and field
    bad = [dict(r) for r in rows]
    bad[2]["event2_elevation"] = "up"
    _write_manifest(tmp_path / MANIFEST, bad)
    with pytest.raises(ManifestError, match="line 4: field 'event2_elevation'"):
        read_manifest(str(tmp_path))
    # an item without its neg_s
    _write_manifest(tmp_path / MANIFEST, [r for r in rows if not (r["item_id"] == "train_00000"
                                                                  and r["variant"] == "neg_s")])
    with pytest.raises(ManifestError, match="train_00000.*expected all of"):
        STClothoDataset(str(tmp_path), "train", FE)
    # event classes and onsets are optional (real data have none)
    _write_manifest(tmp_path / MANIFEST, [{k: v for k, v in r.items() if "class" not in k and "onset" not in k}
                                          for r in rows])
    assert len(read_manifest(str(tmp_path))) == len(rows)
    # audio problems
    stereo = tmp_path / "stereo.wav"
    wavfile.write(stereo, SR, np.zeros((SR, 2), np.int16))
    with pytest.raises(AudioFileError, match="stereo.wav: 2 channel.*expected 4 FOA channels"):
        read_foa(str(stereo), SR, 1.0)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_foa(str(tmp_path / "missing.wav"), SR, 1.0)
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(AudioFileError, match="junk.wav: not a readable audio file"):
        read_foa(str(tmp_path / "junk.wav"), SR, 1.0)
    assert MANIFEST_COLUMNS[0] == "split"


def test_classical_doa_baseline_finds_both_events(dataset_dir):
    ds = STClothoDataset(dataset_dir, "train", FE)
    errs = []
    for it, doa in zip(ds.items, ds.doa):
        for v, target in zip(("pos", "neg_t", "neg_s"), doa):
            x = read_foa(os.path.join(dataset_dir, it[v]["file_name"]), SR, 4.0)
            errs.append(angular_error_deg(estimate_two_doas(x, SR)[None], target[None])[0])
    # it does not know when the events occur, yet separates them (chance is ~90 deg)
    assert np.mean(errs) < 30.0, errs


# A new value for every generator key; each must make prepare_data rebuild.
CHANGED = {"num_train": 2, "num_val": 2, "num_test": 2, "num_zeroshot": 2, "gen_seed": 7,
           "sample_rate": 8000, "clip_seconds": 5.0, "event_seconds": [0.6, 1.0],
           "max_elevation": 10.0, "max_order": 0, "snr_db": [0, 5],
           "captions": "template"}


def _tiny_cfg(root, **data):
    argv = ["--family", "sclap", "--data.root", root, "--data.gen_workers", "1",
            "--data.num_train", "1", "--data.num_val", "1", "--data.num_test", "1",
            "--data.num_zeroshot", "1", "--data.max_order", "2",
            "--model.text.disk_cache", "false"]   # the generator's files only (no text cache file)
    for k, v in data.items():
        argv += [f"--data.{k}", json.dumps(v)]
    return load_config(argv)


def _tree(root):
    """{relative path: sha256} of every file the generator wrote (not the cache's marker/lock)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if not f.startswith(".structclip"):
                with open(os.path.join(d, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(d, f), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_every_generator_key_is_recorded(tmp_path):
    """generate() reads no key that the cache's params leave out."""
    class Recording(dict):
        def __getitem__(self, k):
            read.add(k)
            return super().__getitem__(k)
    read = set()
    cfg = _tiny_cfg(str(tmp_path / "d"))
    generate(Recording({k: cfg["data"][k] for k in fam.GEN_KEYS}, dir=str(tmp_path / "g")), workers=1)
    assert read - {"dir"} == set(fam.GEN_KEYS) == set(CHANGED)
    with pytest.raises(ValueError, match="event_seconds.*clip_seconds"):
        generate(dict(cfg["data"], clip_seconds=3.0, dir=str(tmp_path / "short")))


def test_cache_rebuilds_when_any_generator_key_changes(tmp_path, monkeypatch):
    root = str(tmp_path / "data")
    fam.prepare_data(_tiny_cfg(root))
    first = _tree(root)
    mtime = os.path.getmtime(os.path.join(root, MANIFEST))
    fam.prepare_data(_tiny_cfg(root))                       # same params: reused, not rewritten
    assert _tree(root) == first and os.path.getmtime(os.path.join(root, MANIFEST)) == mtime
    # the default folder (data.root null) is named after all params, so it differs too
    monkeypatch.setattr(fam, "REPO_ROOT", str(tmp_path / "repo"))
    base = fam.data_dir(load_config(["--family", "sclap"]))
    for key, value in CHANGED.items():
        fam.prepare_data(_tiny_cfg(root, **{key: value}))
        assert _tree(root) != first, f"data.{key} changed but the old data were reused"
        fam.prepare_data(_tiny_cfg(root))
        assert _tree(root) == first, key                    # back to the same bytes
        other = fam.data_dir(load_config(["--family", "sclap", f"--data.{key}", json.dumps(value)]))
        assert other != base, key


def test_a_users_folder_gets_no_cache_files(dataset_dir, tmp_path, monkeypatch):
    """data.generate false: the features are cached under data.cache_dir, and
    the user's folder stays byte-identical."""
    user = tmp_path / "mydata"
    shutil.copytree(dataset_dir, user, ignore=shutil.ignore_patterns("features_*", ".structclip*"))
    before = _tree(str(user)), sorted(os.listdir(user))
    cfg = load_config(["--family", "sclap", "--data.generate", "false", "--data.root", str(user),
                       "--data.sample_rate", str(SR), "--data.clip_seconds", "4.0",
                       "--data.cache_dir", str(tmp_path / "repo")])
    fam.prepare_data(cfg)
    ds = fam.build_datasets(cfg)
    assert ds["train"][0]["feats"].shape == (3, 7, 101, 32)
    assert (_tree(str(user)), sorted(os.listdir(user))) == before
    assert os.listdir(fam.cache_dir(cfg)) and fam.cache_dir(cfg).startswith(str(tmp_path / "repo"))
    with pytest.raises(UserDataError, match="mydata.*--data.generate false"):
        fam.prepare_data(load_config(["--family", "sclap", "--data.root", str(user)]))


def test_a_relative_root_resolves_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _tiny_cfg("rel/data")
    assert fam.data_dir(cfg) == str(tmp_path / "rel" / "data")
    fam.prepare_data(cfg)
    assert os.path.exists(tmp_path / "rel" / "data" / MANIFEST)


def test_soundfile_reads_the_generated_wavs_as_the_old_scipy_reader_did(dataset_dir):
    """Generated data keep their numbers: soundfile's float32 of the int16 WAVs is
    scipy's int16 / 32768 (the reader before real data), sample for sample."""
    for r in read_manifest(dataset_dir)[:6]:
        path = os.path.join(dataset_dir, r["file_name"])
        sr, pcm = wavfile.read(path)
        assert sr == SR and pcm.dtype == np.int16
        np.testing.assert_array_equal(read_foa(path, SR, 4.0), pcm.T.astype(np.float32) / 32768.0)
