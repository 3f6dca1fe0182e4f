"""The two on-disk layouts TimesCLIP reads, into one in-memory table.

``fields`` (the project's, what the generator writes): ``<root>/fields.csv``,
one row per field-season::

    field_id,region,year,yield_t_ha,NIR_00,...,NIR_35,RVI_00,...,red_35

``per_year`` (the crop-yield port's, fightheyyy/VTT-guowei; BRIEF sec. 4): one
CSV a year, ``<root>/extract{YEAR}_<anything>.csv`` (e.g.
``extract2019_20251010_165007.csv``), one row per field; band columns
``<band>_00 ... <band>_35`` (14 bands there, names of mixed case: ``NIR``,
``evi``, ``ndvi``, ...), the yield in ``y{YEAR}``; no field, region or year
columns (the year is the file name's; other columns are ignored).

Both layouts, read by the same code:

- bands are chosen by name (``data.bands``), matched to the columns without
  regard to case; every chosen band needs exactly the steps ``_00 ... _35``;
- a cell that pandas (the port's reader) reads as missing -- empty, ``NaN``,
  ``NA``, ``null``, ... -- is a gap (a cloudy composite) and is filled by
  linear interpolation in time (the edges hold the nearest observation); a
  band with no observation in a row is an error;
- an empty yield is allowed (stage 1 needs none); stage 2 refuses it.

Every error (``UserDataError``, a ``ValueError``) names the file, the line or
column, and what was expected.
"""
import csv
import glob
import os
import re

import numpy as np

from data.cache import UserDataError, resolve_root
from data.layout import Layout, detect_layout, exists

N_STEPS = 36
FIELDS = "fields.csv"
META = ("field_id", "region", "year", "yield_t_ha")
PER_YEAR_GLOB = "extract[0-9][0-9][0-9][0-9]_*.csv"
PER_YEAR_NAME = re.compile(r"^extract(\d{4})_.*\.csv$")
# pandas.read_csv's default missing-value strings: what the port reads as NaN.
MISSING = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
           "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
_STEP_COL = re.compile(r"^(.+)_(\d+)$")


def per_year_files(root):
    """``[(year, path)]`` of the port's files under ``root``, sorted by name."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, PER_YEAR_GLOB))):
        m = PER_YEAR_NAME.match(os.path.basename(path))
        if m:
            out.append((int(m.group(1)), path))
    return out


LAYOUTS = [
    Layout("fields", exists(FIELDS),
           f"{FIELDS} (columns {','.join(META)},<band>_00..<band>_35)"),
    Layout("per_year", lambda root: bool(per_year_files(root)),
           "extract{YEAR}_*.csv, one file a year (columns <band>_00..<band>_35 and y{YEAR})"),
]


def describe(root, layout):
    """One line for the log: what was found."""
    if layout.name == "fields":
        return os.path.join(root, FIELDS)
    files = per_year_files(root)
    return ", ".join(f"{os.path.basename(p)} (year {y})" for y, p in files)


def load(root, layout, bands, n_steps=N_STEPS):
    """Read ``root`` in ``layout`` (a ``Layout`` or its name). Returns dict with
    ``series`` [N, T, V] float32 (gaps filled), ``observed`` [N, T, V] bool,
    ``yield`` [N] float32 (NaN if empty), ``year`` [N] int64, and per row
    ``field_id``, ``region`` and ``where`` (``"<file>, line <n>, field <yield
    column>"``, for error messages)."""
    name = getattr(layout, "name", layout)
    if name == "fields":
        return load_fields(os.path.join(root, FIELDS), bands, n_steps)
    if name == "per_year":
        return load_per_year(root, bands, n_steps)
    raise UserDataError(f"unknown TimesCLIP layout {name!r}; known: {[lay.name for lay in LAYOUTS]}")


def load_fields(path, bands, n_steps=N_STEPS):
    """The project's ``fields.csv``."""
    header, rows = _read_csv(path)
    missing = [c for c in META if c not in header]
    if missing:
        raise UserDataError(f"{path}: missing column(s) {missing}; expected {','.join(META)} "
                            f"then <band>_00..<band>_{n_steps - 1:02d}")
    col = {c: header.index(c) for c in META}
    vidx = band_columns(path, header, bands, n_steps)
    years, ylds, vals, where = [], [], [], []
    for line, row in rows:
        try:
            years.append(int(row[col["year"]]))
        except ValueError:
            raise UserDataError(f"{path}, line {line}, field 'year': expected an integer, "
                                f"got {row[col['year']]!r}") from None
        ylds.append(_float(row[col["yield_t_ha"]], path, line, "yield_t_ha", "a yield in t/ha"))
        vals.append([_float(row[i], path, line, header[i]) for i in vidx])
        where.append(f"{path}, line {line}, field 'yield_t_ha'")
    return _table(path, bands, n_steps, vals, ylds, years, [ln for ln, _ in rows], where,
                  [r[col["field_id"]] for _, r in rows], [r[col["region"]] for _, r in rows])


def load_per_year(root, bands, n_steps=N_STEPS):
    """The port's ``extract{YEAR}_*.csv`` files, one a year, concatenated."""
    files = per_year_files(root)
    if not files:
        raise UserDataError(f"{root}: no {PER_YEAR_GLOB} files")
    seen = {}
    for year, path in files:
        if year in seen:   # two exports of one year would count its fields twice
            raise UserDataError(f"{path}: a second file for year {year} (also {seen[year]}); "
                                f"expected one extract{year}_*.csv")
        seen[year] = path
    parts = []
    for year, path in files:
        header, rows = _read_csv(path)
        want = f"y{year}"
        ycols = [i for i, c in enumerate(header) if c.strip().lower() == want]
        if len(ycols) != 1:
            found = [c for c in header if re.fullmatch(r"[yY]\d{4}", c.strip())]
            raise UserDataError(f"{path}: {'no' if not ycols else 'more than one'} yield column "
                                f"{want!r} (the year {year} from the file name); yield-like columns "
                                f"found: {found or 'none'}")
        yi, yname = ycols[0], header[ycols[0]]
        vidx = band_columns(path, header, bands, n_steps)
        name = os.path.basename(path)
        vals, ylds, where = [], [], []
        for line, row in rows:
            ylds.append(_float(row[yi], path, line, yname, "a yield"))
            vals.append([_float(row[i], path, line, header[i]) for i in vidx])
            where.append(f"{path}, line {line}, field {yname!r}")
        parts.append(_table(path, bands, n_steps, vals, ylds, [year] * len(rows),
                            [ln for ln, _ in rows], where,
                            [f"{name}:{line}" for line, _ in rows], [""] * len(rows)))
    out = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
               else [x for p in parts for x in p[k]]) for k in parts[0] if k != "bands"}
    return {**out, "bands": list(bands)}


def value_columns(bands, n_steps=N_STEPS):
    """``<band>_<step>`` names, band-major, as the generator writes them."""
    return [f"{b}_{t:02d}" for b in bands for t in range(n_steps)]


def band_columns(path, header, bands, n_steps=N_STEPS):
    """Column indices of ``bands`` x steps, band-major (``[V * T]``), matched
    to ``header`` without regard to case."""
    by_band = {}   # lower-case band -> {spelling: {step: column index}}
    for i, c in enumerate(header):
        m = _STEP_COL.match(c.strip())
        if m:
            steps = by_band.setdefault(m.group(1).lower(), {}).setdefault(m.group(1), {})
            if int(m.group(2)) in steps:
                raise UserDataError(f"{path}: column {c!r} appears twice (also column "
                                    f"{steps[int(m.group(2))] + 1}); expected each once")
            steps[int(m.group(2))] = i
    out = []
    for band in bands:
        spellings = by_band.get(str(band).lower())
        if not spellings:
            present = sorted({s for v in by_band.values() for s in v})
            raise UserDataError(f"{path}: no columns for band {band!r} (looked for {band}_00.."
                                f"{band}_{n_steps - 1:02d}, any case); bands in the file: "
                                f"{', '.join(present) or 'none'}")
        if len(spellings) > 1:
            raise UserDataError(f"{path}: band {band!r} is spelt more than one way "
                                f"({', '.join(f'{s}_*' for s in sorted(spellings))}); expected one")
        (spelling, steps), = spellings.items()
        if sorted(steps) != list(range(n_steps)):
            got = sorted(steps)
            raise UserDataError(f"{path}: band {spelling!r} has {len(got)} step columns "
                                f"({spelling}_{got[0]:02d}..{spelling}_{got[-1]:02d}); expected "
                                f"{n_steps}: {spelling}_00..{spelling}_{n_steps - 1:02d}")
        out += [steps[t] for t in range(n_steps)]
    return out


def _read_csv(path):
    """Header and ``[(line number, row)]``; rows of the header's length."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (TimesCLIP layouts: data/timesclip/formats.py)")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:   # -sig: Excel's byte-order mark
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserDataError(f"{path}: empty file, expected a header row")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise UserDataError(f"{path}, line {reader.line_num}: {len(row)} fields, "
                                        f"expected {len(header)} (the header's)")
                rows.append((reader.line_num, row))
    except UnicodeDecodeError as e:
        raise UserDataError(f"{path}: not UTF-8 text (byte {e.start}); expected a UTF-8 CSV") from None
    except csv.Error as e:
        raise UserDataError(f"{path}, line {reader.line_num}: not CSV ({e})") from None
    if not rows:
        raise UserDataError(f"{path}: no data rows")
    return header, rows


def _float(text, path, line, field, what="a number"):
    if text.strip() in MISSING:
        return np.nan
    try:
        v = float(text)
    except ValueError:
        raise UserDataError(f"{path}, line {line}, field {field!r}: expected {what} or empty, "
                            f"got {text!r}") from None
    if not np.isfinite(v):
        raise UserDataError(f"{path}, line {line}, field {field!r}: expected a finite number, "
                            f"got {text!r}")
    return v


def _table(path, bands, n_steps, vals, ylds, years, lines, where, ids, regions):
    raw = np.asarray(vals, np.float64).reshape(len(vals), len(bands), n_steps).transpose(0, 2, 1)
    observed = ~np.isnan(raw)                                    # [N, T, V]
    empty = np.argwhere(~observed.any(1))
    if len(empty):
        i, v = empty[0]
        raise UserDataError(f"{path}, line {lines[i]}, field '{bands[v]}_*': no observed value in the "
                            f"whole season; expected at least one")
    return {"series": fill_gaps(raw).astype(np.float32), "observed": observed,
            "yield": np.asarray(ylds, np.float32), "year": np.asarray(years, np.int64),
            "field_id": list(ids), "region": list(regions), "where": list(where),
            "bands": list(bands)}


def fill_gaps(raw):
    """Linear interpolation in time of NaN gaps, [N, T, V]; edges hold the
    nearest observation (as a compositing pipeline would)."""
    out = raw.copy()
    t = np.arange(raw.shape[1])
    for i, v in zip(*np.where(np.isnan(raw).any(1))):
        s = raw[i, :, v]
        ok = ~np.isnan(s)
        out[i, :, v] = np.interp(t, t[ok], s[ok])
    return out


def find_layout(data_cfg):
    """``(root, Layout)`` of ``data.root``: generated data are the ``fields``
    layout; a user's folder (``data.generate false``) holds whichever layout
    is found there, or the one ``data.format`` forces."""
    d = data_cfg
    root = resolve_root(d["root"])
    bands = d["bands"]
    if (not isinstance(bands, (list, tuple)) or not bands
            or not all(isinstance(b, str) and b.strip() for b in bands)):
        raise UserDataError(f"data.bands: expected a list of band names, e.g. "
                            f"[NIR, RVI, SWIR1, blue, evi, ndvi, red]; got {bands!r}")
    lower = [b.lower() for b in bands]
    if len(set(lower)) != len(lower):
        raise UserDataError(f"data.bands: {bands!r} names a band twice (names match any case)")
    if d["generate"]:
        if d["format"] not in ("auto", "fields"):
            raise UserDataError(f"--data.format {d['format']}: the generator writes the fields "
                                f"layout; to read {d['format']} data in {root} pass "
                                f"--data.generate false")
        return root, LAYOUTS[0]
    return root, detect_layout(root, LAYOUTS, d["format"], "TimesCLIP")
