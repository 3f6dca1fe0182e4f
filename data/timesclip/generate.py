"""Synthetic crop field-seasons driven by crop physics, written in the
TimesCLIP file format (the ``fields`` layout of ``data/timesclip/formats.py``).

Per field-season, a daily simulation (vectorised over fields):
- weather: seasonal temperature and radiation with a (region, year) anomaly
  and AR(1) day-to-day noise, rain events;
- phenology from growing degree days (GDD): emergence, leaf growth, flowering,
  grain fill, senescence; heat (Tmax > 32 C) and drought speed senescence;
- soil water bucket: rain in, evapotranspiration out; water stress Ws in [0, 1];
- biomass by light-use efficiency: dB = RUE * fAPAR(LAI) * 0.48 * Rad * Ws * fT;
- yield = biomass * harvest index, the index cut by heat around flowering and
  by drought during grain fill (BRIEF sec. 4);
- reflectances (blue, red, NIR, SWIR1) mix soil and canopy by LAI, drought
  brightens SWIR1; the 10-day composite is the mean of the days, then
  multiplicative sensor noise; NDVI, RVI, EVI are computed from the noisy
  bands; cloudy composites are left empty (gaps).

Yield therefore depends on the whole trajectory (integrated green cover times
light, stress timing), not only on peak NDVI. Run:
``python -m data.timesclip.generate --out data_cache/timesclip/default``
(the folder the training run would make for the same parameters:
``ensure_fields`` keeps generated data under the shared rule of
data/cache.py, so a folder holding anything else is refused).
"""
import argparse
import csv
import io
import os

import numpy as np

from data.cache import ensure_generated
from data.timesclip.formats import FIELDS, N_STEPS
from training.io import atomic_write

BANDS = ("NIR", "RVI", "SWIR1", "blue", "EVI", "NDVI", "red")   # the default data.bands
DAYS = N_STEPS * 10


def _region_climates(n_regions, rng):
    # Columns of a temperate grain belt: warmer regions are sown earlier and
    # risk heat at flowering, drier ones risk drought.
    return {
        "t_mean": rng.uniform(9.0, 14.0, n_regions),      # annual mean, C
        "t_amp": rng.uniform(10.0, 13.0, n_regions),      # seasonal amplitude, C
        "rad_mean": rng.uniform(13.0, 16.0, n_regions),   # MJ m-2 d-1
        "rain_mm": rng.uniform(1.2, 2.4, n_regions),      # mean daily rain, mm
        "cloud_p": rng.uniform(0.08, 0.22, n_regions),    # composite cloud probability
        "soil_cap": rng.uniform(120.0, 200.0, n_regions), # plant-available water, mm
    }


def simulate(n_fields, region, year_anom, clim, rng):
    """Daily simulation of ``n_fields`` field-seasons.

    region: [N] region index; year_anom: dict of [N] (region, year) weather
    anomalies. Returns bands [N, 36, 4] (blue, red, NIR, SWIR1 composites,
    noise-free) and yield [N] in t/ha.
    """
    n = n_fields
    d = np.arange(DAYS)
    t_mean = clim["t_mean"][region] + year_anom["dt"]
    t_amp = clim["t_amp"][region]
    rad_mean = clim["rad_mean"][region] * year_anom["rad"]
    rain_mean = clim["rain_mm"][region] * year_anom["rain"]
    cap = clim["soil_cap"][region] * rng.uniform(0.8, 1.2, n)
    fertility = rng.normal(1.0, 0.08, n).clip(0.75, 1.25)
    hi0 = rng.normal(0.46, 0.012, n)
    gdd_flower = rng.normal(1000.0, 40.0, n)
    gdd_mature = gdd_flower + rng.normal(750.0, 30.0, n)
    soil_bright = rng.normal(1.0, 0.08, n)
    # Sowing when the 30-day mean passes ~7 C, plus the farmer's choice.
    sow = 105 - (t_mean - 11.0) * 6.0 + rng.normal(0, 6, n)

    season = np.sin(2 * np.pi * (d[None, :] - 110) / 365.0)  # [1, D]
    noise = np.zeros(n)
    sw = cap * year_anom["sw0"]
    gdd = np.zeros(n)
    lai = np.zeros(n)
    biomass = np.zeros(n)
    heat_flower = np.zeros(n)
    ws_fill_sum, fill_days = np.zeros(n), np.zeros(n)
    daily = np.zeros((n, DAYS, 4))
    wet = np.zeros(n)
    for day in range(DAYS):
        noise = 0.8 * noise + rng.normal(0, 1.6, n)
        t_avg = t_mean + t_amp * season[0, day] + noise
        t_max = t_avg + 6.5
        rad = np.clip(rad_mean + 8.0 * season[0, day] + rng.normal(0, 2.5, n), 2.0, 32.0)
        rain = (rng.random(n) < 0.28) * rng.exponential(rain_mean / 0.28)
        active = day >= sow
        dgdd = np.where(active, np.clip(t_avg - 2.0, 0.0, 28.0), 0.0)
        gdd += dgdd

        cover = 1.0 - np.exp(-0.5 * lai)                      # fAPAR, fraction of cover
        et0 = 0.16 * rad * np.clip(t_avg + 8.0, 0.0, None) / 20.0
        ws = np.clip(sw / (0.45 * cap), 0.0, 1.0)
        sw = np.clip(sw + rain - et0 * (0.25 + 0.75 * cover * ws), 0.0, cap)
        wet = np.maximum(wet * 0.7, (rain > 5).astype(float))

        emerged = active & (gdd > 120)
        veg = emerged & (gdd < gdd_flower)
        fill = emerged & (gdd >= gdd_flower) & (gdd < gdd_mature)
        done = gdd >= gdd_mature
        lai = np.where(emerged & (lai == 0), 0.08, lai)
        f_t = np.clip(1.0 - np.abs(t_avg - 20.0) / 18.0, 0.0, 1.0)
        grow = 0.011 * dgdd * lai * (1.0 - lai / (6.5 * fertility)) * ws ** 0.7
        heat = np.clip(t_max - 32.0, 0.0, None)
        senesce = lai * dgdd * (0.0022 + 0.003 * (1 - ws) + 0.0012 * heat)
        lai = np.where(veg, lai + np.clip(grow, 0, None), lai)
        lai = np.where(fill, lai - senesce, lai)
        lai = np.where(done, lai * 0.8, lai)
        lai = np.clip(lai, 0.0, None)

        biomass += np.where(emerged & ~done, 2.4 * fertility * cover * 0.48 * rad * ws * f_t, 0.0)
        near_flower = emerged & (np.abs(gdd - gdd_flower) < 150)
        heat_flower += near_flower * (t_max > 31.0) * (t_max - 31.0)
        ws_fill_sum += fill * ws
        fill_days += fill

        # Reflectances: soil (darker when wet) under a canopy of cover g.
        g = 1.0 - np.exp(-0.6 * lai)
        soil = soil_bright * (1.0 - 0.25 * wet)
        dry_leaf = 0.08 * (1 - ws) + 0.05 * done
        daily[:, day, 0] = 0.09 * soil * (1 - g) + 0.025 * g                      # blue
        daily[:, day, 1] = 0.17 * soil * (1 - g) + (0.035 + dry_leaf) * g         # red
        daily[:, day, 2] = 0.24 * soil * np.exp(-0.5 * lai) + 0.47 * (1 - np.exp(-0.5 * lai))  # NIR
        daily[:, day, 3] = 0.30 * soil * (1 - g) + (0.14 + dry_leaf * 1.2) * g    # SWIR1

    ws_fill = np.where(fill_days > 0, ws_fill_sum / np.maximum(fill_days, 1), 0.0)
    hi = hi0 * np.clip(1.0 - 0.012 * heat_flower, 0.55, 1.0) * (0.7 + 0.3 * ws_fill)
    yield_t_ha = biomass * hi / 100.0                          # g m-2 -> t ha-1
    bands = daily.reshape(n, N_STEPS, 10, 4).mean(2)           # [N, 36, 4]
    return bands, yield_t_ha


def to_variates(bands, rng, noise=0.03):
    """Noisy composites -> the seven variates in BANDS order, [N, 36, 7]."""
    b = bands * rng.normal(1.0, noise, bands.shape)
    blue, red, nir, swir = (np.clip(b[..., i], 1e-3, None) for i in range(4))
    ndvi = (nir - red) / (nir + red)
    rvi = nir / red
    evi = 2.5 * (nir - red) / (nir + 6 * red - 7.5 * blue + 1.0)
    return np.stack([nir, rvi, swir, blue, evi, ndvi, red], -1)


def generate(out_dir, n_regions=4, years=(2018, 2019, 2020, 2021, 2022),
             fields_per_region_year=100, seed=0):
    """Write ``out_dir/fields.csv`` (a new file: an existing one is never
    overwritten); returns its path. ``ensure_fields`` is the cached entry
    point."""
    path = os.path.join(out_dir, FIELDS)
    if os.path.exists(path):
        raise FileExistsError(f"{path}: already exists; the generator writes only new files "
                              f"(ensure_fields keeps a generated folder up to date)")
    rng = np.random.default_rng(seed)
    clim = _region_climates(n_regions, rng)
    rows = []
    for year in years:
        # One weather anomaly per (region, year): the test year differs from
        # every training year in temperature, rain and light.
        dt = rng.normal(0, 1.2, n_regions)
        rain = np.exp(rng.normal(0, 0.3, n_regions))
        rad = np.exp(rng.normal(0, 0.04, n_regions))
        sw0 = rng.uniform(0.4, 1.0, n_regions)
        region = np.repeat(np.arange(n_regions), fields_per_region_year)
        anom = {"dt": dt[region], "rain": rain[region], "rad": rad[region], "sw0": sw0[region]}
        bands, y = simulate(len(region), region, anom, clim, rng)
        series = to_variates(bands, rng)
        cloud = rng.random(series.shape[:2]) < clim["cloud_p"][region][:, None]
        cloud[:, 0] = False  # keep the first composite so every band starts observed
        series[cloud] = np.nan
        for i in range(len(region)):
            rows.append((f"r{region[i]}_y{year}_f{i % fields_per_region_year:04d}",
                         f"region{region[i]}", year, y[i], series[i]))
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["field_id", "region", "year", "yield_t_ha"]
               + [f"{b}_{t:02d}" for b in BANDS for t in range(N_STEPS)])
    for fid, reg, year, y, s in rows:
        vals = ["" if np.isnan(v) else f"{v:.5f}" for v in s.T.reshape(-1)]  # band-major
        w.writerow([fid, reg, year, f"{y:.4f}"] + vals)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(path, text.getvalue().encode("utf-8"))
    return path


def ensure_fields(root, n_regions, years, fields_per_region_year, gen_seed):
    """The path of ``root/fields.csv`` generated for exactly these parameters
    (every one the generator reads, recorded in the cache marker), built
    unless it is already there; relative roots resolve against the current
    directory."""
    params = {"n_regions": n_regions, "years": list(years),
              "fields_per_region_year": fields_per_region_year, "gen_seed": gen_seed}
    root = ensure_generated(root, params, lambda tmp: generate(tmp, n_regions, tuple(years),
                                                              fields_per_region_year, gen_seed),
                            "TimesCLIP fields")
    return os.path.join(root, FIELDS)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n-regions", type=int, default=4)
    p.add_argument("--years", type=int, nargs="+", default=[2018, 2019, 2020, 2021, 2022])
    p.add_argument("--fields-per-region-year", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(ensure_fields(a.out, a.n_regions, a.years, a.fields_per_region_year, a.seed))


if __name__ == "__main__":
    main()
