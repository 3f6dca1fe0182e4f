"""TimesCLIP reads a user's folder in either layout, by looking, and never
writes to it: the project's ``fields.csv`` and the crop-yield port's per-year
``extract{YEAR}_*.csv`` (BRIEF sec. 4: 14 bands of mixed case x 36 steps as
``<band>_00..<band>_35``, the yield in ``y{YEAR}``, the year from the file
name), bands chosen by name, the split by year from the config."""
import csv
import json
import os

import numpy as np
import pytest
import torch

import eval as eval_script
import train_stage1
import train_stage2
from data.cache import UserDataError
from data.timesclip.dataset import FieldTable
from data.timesclip.formats import load_per_year
from data.timesclip.generate import BANDS
from families import timesclip as fam
from models.timesclip.model import TimesCLIP
from models.timesclip.render import render_variates
from tests.test_timesclip_stage2 import TINY
from training.config import load_config
from tests.folder_digest import tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The port's 14 bands, spelt as in its loader (fightheyyy/VTT-guowei data_loader_multiyear.py).
PORT_BANDS = ("NIR", "RVI", "SWIR1", "blue", "bsi", "evi", "gcvi", "green", "lswi", "ndsi",
              "ndvi", "ndwi", "ndyi", "red")
YEARS = (2019, 2020, 2021)
N = 8                        # fields a year
STAMP = "20251010_165007"    # the port's file names: extract2019_20251010_165007.csv
SPLIT = ["--data.train_years", "[2019]", "--data.val_years", "[2020]", "--data.test_years", "[2021]"]


def _season(rng, n):
    """[n, 36, 14] seasonal curves, 6 decimals (what the file holds exactly)."""
    t = np.arange(36)[None, :, None]
    amp, phase = rng.uniform(0.1, 0.5, (n, 1, 14)), rng.uniform(0, 6, (n, 1, 14))
    return np.round(0.5 + amp * np.sin(0.18 * t + phase) + 0.02 * rng.standard_normal((n, 36, 14)), 6)


def write_per_year(root, years=YEARS, n=N, seed=0):
    """The port's files; returns {year: (values [n, 36, 14] with NaN gaps, yields [n])}.
    Gaps (empty cells): field 0's ndvi_05, field 1's NIR_00 and NIR_01. The
    last year's columns are shuffled (the loader reads by name)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    out = {}
    for k, year in enumerate(years):
        v = _season(rng, n)
        v[0, 5, PORT_BANDS.index("ndvi")] = np.nan
        v[1, :2, PORT_BANDS.index("NIR")] = np.nan
        y = np.round(rng.uniform(3, 9, n), 4)
        header = [f"{b}_{t:02d}" for b in PORT_BANDS for t in range(36)] + [f"y{year}"]
        rows = [["" if np.isnan(c) else f"{c:.6f}" for c in v[i].T.reshape(-1)] + [f"{y[i]:.4f}"]
                for i in range(n)]
        order = rng.permutation(len(header)) if k == len(years) - 1 else np.arange(len(header))
        with open(os.path.join(root, f"extract{year}_{STAMP}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([header[j] for j in order])
            w.writerows([[r[j] for j in order] for r in rows])
        out[year] = (v, y)
    return out


def write_fields(root, years=YEARS, n=N, seed=1):
    """The project's fields.csv with band names in the port's mixed case;
    returns values [3n, 36, 14] and yields [3n]."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    v, y = _season(rng, len(years) * n), np.round(rng.uniform(3, 9, len(years) * n), 4)
    with open(os.path.join(root, "fields.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["field_id", "region", "year", "yield_t_ha"]
                   + [f"{b}_{t:02d}" for b in PORT_BANDS for t in range(36)])
        for i in range(len(v)):
            w.writerow([f"f{i}", "r0", years[i // n], f"{y[i]:.4f}"]
                       + [f"{c:.6f}" for c in v[i].T.reshape(-1)])
    return v, y


def _cfg(root, *extra):
    return load_config(["--family", "timesclip", "--data.root", str(root), "--data.generate", "false",
                        *TINY, *SPLIT, *extra])


def _port_index(bands):
    return [[b.lower() for b in PORT_BANDS].index(b.lower()) for b in bands]


def test_per_year_files_read_by_name_any_case_year_from_the_name(tmp_path):
    written = write_per_year(tmp_path / "port")
    t = FieldTable.from_config(_cfg(tmp_path / "port")["data"])   # default bands: EVI, NDVI upper case
    d, idx = t.d, _port_index(BANDS)
    assert t.bands == list(BANDS) and d["series"].shape == (3 * N, 36, 7)
    for k, year in enumerate(YEARS):
        v, y = written[year]
        rows = slice(k * N, (k + 1) * N)
        assert (d["year"][rows] == year).all()                     # from the file name
        np.testing.assert_allclose(d["yield"][rows], y, rtol=1e-6)  # from y{YEAR}
        want = v[..., idx].copy()
        # the gaps, filled by hand: linear in time, the edge holds the nearest observation
        nd, nir = BANDS.index("NDVI"), BANDS.index("NIR")
        want[0, 5, nd] = (want[0, 4, nd] + want[0, 6, nd]) / 2
        want[1, :2, nir] = want[1, 2, nir]
        np.testing.assert_allclose(d["series"][rows], want, atol=2e-6)
        assert not d["observed"][rows][0, 5, nd] and d["observed"][rows][0, 4, nd]
        assert d["observed"][rows].sum() == N * 36 * 7 - 3
    assert [list(t.splits[s]) for s in ("train", "val", "test")] == [
        list(range(0, N)), list(range(N, 2 * N)), list(range(2 * N, 3 * N))]
    assert d["where"][N] == f"{tmp_path / 'port'}/extract2020_{STAMP}.csv, line 2, field 'y2020'"


def test_data_bands_choose_bands_by_name_in_both_layouts(tmp_path):
    written = write_per_year(tmp_path / "port")
    fields_v, _ = write_fields(tmp_path / "mine")
    bands = ["ndwi", "Green", "nir"]
    for root, want in ((tmp_path / "port", np.concatenate([written[y][0] for y in YEARS])),
                       (tmp_path / "mine", fields_v)):
        cfg = _cfg(root, "--data.bands", json.dumps(bands))
        t = FieldTable.from_config(cfg["data"])
        got, ref = t.d["series"], want[..., _port_index(bands)]
        ok = ~np.isnan(ref)
        np.testing.assert_allclose(got[ok], ref[ok], atol=2e-6)
        model = fam.build_model(cfg)                                 # one variate a chosen band
        assert model.n_variates == 3
        ds = fam.build_datasets(cfg)["train"]
        assert ds[0]["x"].shape == (18, 3)
    with pytest.raises(UserDataError, match="names a band twice"):
        FieldTable.from_config(_cfg(tmp_path / "port", "--data.bands", '["ndvi", "NDVI"]')["data"])


def _rewrite(path, edit):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _drop(rows, column):
    keep = [i for i, c in enumerate(rows[0]) if not column(c)]
    rows[:] = [[row[i] for i in keep] for row in rows]


@pytest.mark.parametrize("edit, message", [
    (lambda r: _drop(r, lambda c: c.startswith("evi_")),
     r"extract2019_{}.csv: no columns for band 'EVI' \(looked for EVI_00..EVI_35, any case\); "
     r"bands in the file: .*NIR.*"),
    (lambda r: _drop(r, lambda c: c == "ndvi_35"),
     r"extract2019_{}.csv: band 'ndvi' has 35 step columns \(ndvi_00..ndvi_34\); "
     r"expected 36: ndvi_00..ndvi_35"),
    (lambda r: r[0].__setitem__(r[0].index("red_00"), "red_36"),
     r"extract2019_{}.csv: band 'red' has 36 step columns \(red_01..red_36\); expected 36"),
    (lambda r: r[3].__setitem__(-1, "n/d?"),
     r"extract2019_{}.csv, line 4, field 'y2019': expected a yield or empty, got 'n/d\?'"),
    (lambda r: r[0].__setitem__(-1, "yield"),
     r"extract2019_{}.csv: no yield column 'y2019' \(the year 2019 from the file name\)"),
    (lambda r: r[0].__setitem__(r[0].index("green_03"), "NIR_03"),
     r"extract2019_{}.csv: column 'NIR_03' appears twice \(also column 4\)"),
    (lambda r: r[0].__setitem__(r[0].index("blue_00"), "BLUE_00"),
     r"extract2019_{}.csv: band 'blue' is spelt more than one way \(BLUE_\*, blue_\*\)"),
    (lambda r: [row.__setitem__(i, "") for row in r[1:2] for i, c in enumerate(r[0])
                if c.startswith("SWIR1_")],
     r"extract2019_{}.csv, line 2, field 'SWIR1_\*': no observed value in the whole season"),
    (lambda r: r[2].__setitem__(7, "cloudy"),
     r"extract2019_{}.csv, line 3, field 'NIR_07': expected a number or empty, got 'cloudy'"),
])
def test_bad_per_year_files_name_the_file_the_column_and_what_was_expected(tmp_path, edit, message):
    write_per_year(tmp_path)
    _rewrite(tmp_path / f"extract2019_{STAMP}.csv", edit)
    with pytest.raises(ValueError, match=message.format(STAMP)):
        load_per_year(str(tmp_path), BANDS)


def test_a_short_row_and_a_binary_file_name_the_file(tmp_path):
    write_per_year(tmp_path)
    _rewrite(tmp_path / f"extract2020_{STAMP}.csv", lambda r: r[5].pop())
    with pytest.raises(UserDataError, match=rf"extract2020_{STAMP}.csv, line 6: 504 fields, "
                                            r"expected 505 \(the header's\)"):
        load_per_year(str(tmp_path), BANDS)
    (tmp_path / f"extract2020_{STAMP}.csv").write_bytes(b"NIR_00\n\xff\xfe\x00\n")
    with pytest.raises(UserDataError, match=rf"extract2020_{STAMP}.csv: not UTF-8 text"):
        load_per_year(str(tmp_path), BANDS)


def test_two_files_for_one_year_are_refused(tmp_path):
    write_per_year(tmp_path)
    with open(tmp_path / f"extract2019_{STAMP}.csv", "rb") as f:
        (tmp_path / "extract2019_20251111_000000.csv").write_bytes(f.read())
    with pytest.raises(ValueError, match=r"a second file for year 2019"):
        load_per_year(str(tmp_path), BANDS)


def test_detection_is_logged_forced_and_listed(tmp_path, capsys):
    write_per_year(tmp_path / "port")
    write_fields(tmp_path / "mine")
    fam.prepare_data(_cfg(tmp_path / "port"))
    files = ", ".join(f"extract{y}_{STAMP}.csv (year {y})" for y in YEARS)
    assert (f"TimesCLIP data: {tmp_path / 'port'}: per_year layout (detected): {files}; "
            f"bands NIR, RVI, SWIR1, blue, EVI, NDVI, red") in capsys.readouterr().out
    fam.prepare_data(_cfg(tmp_path / "mine", "--data.format", "fields"))
    assert (f"TimesCLIP data: {tmp_path / 'mine'}: fields layout (forced by --data.format): "
            f"{tmp_path / 'mine' / 'fields.csv'}") in capsys.readouterr().out
    with pytest.raises(UserDataError, match=r"port: --data.format fields expects fields.csv"):
        fam.prepare_data(_cfg(tmp_path / "port", "--data.format", "fields"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "yields_2019.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserDataError, match=r"other: matches none of the TimesCLIP layouts this loader "
                                            r"reads \(found: yields_2019.csv\)\. Looked for:\n"
                                            r"  fields: fields.csv .*\n  per_year: extract\{YEAR\}_\*.csv"):
        fam.prepare_data(_cfg(tmp_path / "other"))


def test_generation_on_a_folder_of_per_year_csvs_errors_and_writes_nothing(tmp_path, monkeypatch):
    """Issue 10: pointed at the port's files with generation on (the default),
    TimesCLIP used to write fields.csv and generator.json into the folder."""
    monkeypatch.chdir(tmp_path)
    write_per_year(tmp_path / "port")
    before = tree(tmp_path / "port")
    cfg = load_config(["--family", "timesclip", "--data.root", "port", *TINY, *SPLIT])
    assert cfg["data"]["generate"] is True
    with pytest.raises(UserDataError, match=r"port: holds files this project did not generate "
                                            r"\(extract2019_.*pass --data.generate false"):
        fam.prepare_data(cfg)
    with pytest.raises(UserDataError, match="--data.generate false"):
        train_stage1.main(["--family", "timesclip", "--data.root", "port", *TINY, *SPLIT,
                           "--max-steps", "1", "--logs", str(tmp_path / "logs")])
    with pytest.raises(UserDataError, match=r"--data.format per_year: the generator writes the "
                                            r"fields layout.*--data.generate false"):
        fam.prepare_data(load_config(["--family", "timesclip", "--data.root", "port",
                                      "--data.format", "per_year", *TINY]))
    assert tree(tmp_path / "port") == before


def _train_and_eval(root, tmp_path, name):
    """train_stage1 (2 steps) and eval.py on ``root`` as a user's folder;
    returns the run folder and eval's metrics."""
    run = train_stage1.main(["--family", "timesclip", "--data.root", str(root), "--data.generate",
                             "false", *TINY, *SPLIT, "--batch-size", "4", "--max-steps", "2",
                             "--precision", "fp32", "--logs", str(tmp_path / "logs"), "--name", name,
                             "--device", "cpu"])
    out = tmp_path / f"eval_{name}"
    eval_script.main(["--checkpoint", os.path.join(run, "checkpoints", "latest.pt"), "--out", str(out),
                      "--device", "cpu"])
    with open(out / "metrics.json") as f:
        return run, json.load(f)


@pytest.mark.parametrize("layout", ["fields", "per_year"])
def test_train_and_eval_on_a_users_folder_leave_it_byte_identical(tmp_path, monkeypatch, layout,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)              # anything written against the cwd lands in tmp_path
    root = tmp_path / "mine"
    (write_fields if layout == "fields" else write_per_year)(root)
    before = tree(root)
    _, m = _train_and_eval(root, tmp_path, layout)
    assert np.isfinite(m["completion_rmse"]) and "completion_rmse_ndvi" in m and "v2l_R@1" in m
    out = capsys.readouterr().out
    assert f"{layout} layout (detected)" in out
    gaps = 100 * 3 * 3 / (3 * N * 36 * 7) if layout == "per_year" else 0.0
    assert (f"TimesCLIP table: {3 * N} field-seasons; train {N} (2019: {N}); val {N} (2020: {N}); "
            f"test {N} (2021: {N}); {gaps:.1f}% of cells were gaps") in out
    assert tree(root) == before              # every file identical, nothing added
    assert not os.path.exists(tmp_path / "data_cache")   # nothing derived is cached on disk


def test_stage2_on_the_per_year_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "port"
    written = write_per_year(root)
    before = tree(root)
    run, _ = _train_and_eval(root, tmp_path, "s1")
    test = train_stage2.main(["--family", "timesclip", "--mode", "linear", "--init",
                              os.path.join(run, "checkpoints", "latest.pt"), "--logs",
                              str(tmp_path / "logs"), "--name", "s2", "--stage2.epochs", "2",
                              "--stage2.batch_size", "4", "--workers", "0"])
    # the test year's yields, from y2021 of its file: the training-mean baseline by hand
    y, ytr = written[2021][1], written[2019][1]
    ss = ((y - y.mean()) ** 2).sum()
    assert test["yield_r2_mean"] == pytest.approx(1 - ((ytr.mean() - y) ** 2).sum() / ss, rel=1e-4)
    assert np.isfinite(test["yield_rmse"]) and "yield_r2_ridge" in test
    best = torch.load(tmp_path / "logs" / "s2" / "checkpoints" / "best.pt", map_location="cpu",
                      weights_only=False)
    assert any(k.startswith("head.") for k in best["model"])
    assert tree(root) == before


def test_stage2_refuses_an_empty_yield_naming_its_file_and_line(tmp_path):
    write_per_year(tmp_path)
    _rewrite(tmp_path / f"extract2020_{STAMP}.csv", lambda r: r[3].__setitem__(-1, ""))
    cfg = _cfg(tmp_path)
    fam.build_datasets(cfg)                   # stage 1 needs no yield
    with pytest.raises(ValueError, match=rf"extract2020_{STAMP}.csv, line 4, field 'y2020': "
                                         r"empty yield \(1 of the val rows\)"):
        fam.build_stage2(cfg, None, "scratch")


def test_a_model_for_the_ports_fourteen_bands_draws_each_in_its_own_colour():
    x = torch.linspace(0, 1, 18)[None, :, None].repeat(1, 1, 14)          # [1, 18, 14]
    imgs = render_variates(x, 32, 2.0)                                     # [1, 14, 3, 32, 32]
    ink = [tuple(imgs[0, v].flatten(1).min(1).values.round(decimals=2).tolist()) for v in range(14)]
    assert len(set(ink)) == 14
    assert TimesCLIP(n_variates=14, d_model=16, embed_dim=16, n_layers=1, n_heads=2, image_size=16,
                     vision_patch=8, vision_width=16, vision_layers=1)({"x": torch.randn(2, 18, 14)}
                                                                      )["forecast"].shape == (2, 18, 14)
