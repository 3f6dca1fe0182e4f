"""TimesCLIP data: generator -> file format -> loader, and its errors."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from data.cache import MARKER, UserDataError
from data.timesclip.dataset import FieldTable, YieldDataset
from data.timesclip.formats import load_fields, value_columns
from data.timesclip.generate import BANDS, generate
from families import timesclip as fam
from training.config import load_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    return generate(str(tmp_path_factory.mktemp("tc")), n_regions=2, years=(2018, 2019, 2020),
                    fields_per_region_year=40, seed=1)


def test_generated_file_loads_with_gaps_filled(fields):
    d = load_fields(fields, BANDS)
    n = 2 * 3 * 40
    assert d["series"].shape == (n, 36, 7)
    assert np.isfinite(d["series"]).all()
    assert 0.02 < 1 - d["observed"].mean() < 0.4          # cloud gaps exist and are filled
    assert (d["yield"] > 0).all() and 1.0 < d["yield"].mean() < 12.0   # t/ha
    # Where observed, the indices agree with the bands they are computed from.
    i = BANDS.index
    s, obs = d["series"], d["observed"].all(2)
    ndvi = (s[..., i("NIR")] - s[..., i("red")]) / (s[..., i("NIR")] + s[..., i("red")])
    assert np.abs(ndvi - s[..., i("NDVI")])[obs].max() < 1e-3


def test_yield_follows_the_canopy(fields):
    d = load_fields(fields, BANDS)
    integrated = d["series"][..., BANDS.index("NDVI")].sum(1)
    assert np.corrcoef(integrated, d["yield"])[0, 1] > 0.4


def test_split_by_year_and_train_statistics(fields):
    t = FieldTable(load_fields(fields, BANDS), [2018], [2019], [2020])
    years = t.d["year"]
    assert set(years[t.splits["train"]]) == {2018} and set(years[t.splits["test"]]) == {2020}
    z = t.norm_series("train")
    assert np.allclose(z.mean((0, 1)), 0, atol=1e-4) and np.allclose(z.std((0, 1)), 1, atol=1e-3)
    with pytest.raises(ValueError, match="no rows for test years"):
        FieldTable(load_fields(fields, BANDS), [2018], [2019], [2031])


def test_yield_dataset_augmentation_is_per_item_deterministic(fields):
    t = FieldTable(load_fields(fields, BANDS), [2018], [2019], [2020])
    aug = {"enabled": True, "noise": 0.1, "time_warp": 0.1, "mask": 0.2, "mixup": 0.5,
           "variate_dropout": 0.2}
    ds = YieldDataset(t, "train", aug, seed=3)
    a, b = ds[5], ds[5]
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], ds.x[5])
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["x"], a["x"])
    assert ds.sample_weights.shape == (len(ds),)
    # Rare yields (histogram tails) weigh more than common ones.
    y = ds.y_raw.numpy()
    assert ds.sample_weights[np.argmax(y)] > ds.sample_weights[np.argmin(np.abs(y - np.median(y)))]


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _row(**over):
    r = {"field_id": "f0", "region": "r", "year": "2020", "yield_t_ha": "3.1"}
    r.update({c: "0.2" for c in value_columns(BANDS)})
    r.update(over)
    return r


def test_bad_files_raise_clear_errors(tmp_path):
    header = ["field_id", "region", "year", "yield_t_ha"] + value_columns(BANDS)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_fields(str(tmp_path / "nope.csv"), BANDS)
    p = tmp_path / "missing.csv"
    _write(p, header[:-1], [[_row()[c] for c in header[:-1]]])
    with pytest.raises(ValueError, match=r"missing.csv: band 'red' has 35 step columns \(red_00..red_34\); "
                                         r"expected 36: red_00..red_35"):
        load_fields(str(p), BANDS)
    p = tmp_path / "text.csv"
    _write(p, header, [[_row(NDVI_07="cloudy")[c] for c in header]])
    with pytest.raises(ValueError, match=r"text.csv, line 2, field 'NDVI_07': expected a number"):
        load_fields(str(p), BANDS)
    p = tmp_path / "year.csv"
    _write(p, header, [[_row(year="20x0")[c] for c in header]])
    with pytest.raises(ValueError, match=r"line 2, field 'year': expected an integer"):
        load_fields(str(p), BANDS)
    p = tmp_path / "empty_band.csv"
    _write(p, header, [[_row(**{f"SWIR1_{t:02d}": "" for t in range(36)})[c] for c in header]])
    with pytest.raises(ValueError, match=r"field 'SWIR1_\*': no observed value"):
        load_fields(str(p), BANDS)


def _gen_cfg(root, **over):
    d = {"n_regions": 1, "years": [2018, 2019], "fields_per_region_year": 3, "gen_seed": 0, **over}
    return load_config(["--family", "timesclip", "--data.root", str(root),
                        "--data.n_regions", str(d["n_regions"]), "--data.years", json.dumps(d["years"]),
                        "--data.fields_per_region_year", str(d["fields_per_region_year"]),
                        "--data.gen_seed", str(d["gen_seed"])])


def test_generated_fields_follow_every_generator_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fam.prepare_data(_gen_cfg("rel/tc"))                 # relative: against the current directory
    path = tmp_path / "rel" / "tc" / "fields.csv"
    with open(tmp_path / "rel" / "tc" / MARKER) as f:
        assert json.load(f)["params"] == {"n_regions": 1, "years": [2018, 2019],
                                          "fields_per_region_year": 3, "gen_seed": 0}
    before = path.read_bytes()
    fam.prepare_data(_gen_cfg("rel/tc"))
    assert path.read_bytes() == before                   # same keys: reused
    for key, value in (("n_regions", 2), ("years", [2018, 2020]), ("fields_per_region_year", 4),
                       ("gen_seed", 1)):
        fam.prepare_data(_gen_cfg("rel/tc", **{key: value}))
        assert path.read_bytes() != before, key          # any key changed: rebuilt
        fam.prepare_data(_gen_cfg("rel/tc"))
        assert path.read_bytes() == before, key          # and back


def test_a_users_folder_is_never_written(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "fields.csv").write_text("my own data")
    with pytest.raises(UserDataError, match="--data.generate false"):
        fam.prepare_data(_gen_cfg(user))
    assert os.listdir(user) == ["fields.csv"] and (user / "fields.csv").read_text() == "my own data"
    cfg = _gen_cfg(tmp_path / "empty")
    cfg["data"]["generate"] = False
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserDataError, match=r"empty: matches none of the TimesCLIP layouts(.|\n)*"
                                            r"fields: fields.csv(.|\n)*per_year: extract\{YEAR\}_\*.csv"):
        fam.prepare_data(cfg)
    with pytest.raises(FileExistsError, match="already exists"):
        generate(str(user))
