"""HumanML3D motion -> radar: mmExpert's data pipeline, from the joints alone.

``simulate_humanml3d(src_dir, out_root, workers=1, **params)`` reads a
HumanML3D folder (BRIEF section 2)::

    new_joints/{id}.npy  [T, 22, 3] SMPL-22 joints, metres, Y up, 20 fps;
                         ids ``M{id}`` are the left/right mirrored copies
    texts/{id}.txt       ``caption#tok/POS ...#start#end`` (start = end = 0:
                         the whole motion, else seconds start..end of it)
    train.txt val.txt test.txt   one id a line

and writes, through data/cache.py's ``ensure_generated`` (marker with every
parameter, the source folder's path and a digest of its file list, so a
changed source rebuilds; a folder of somebody else's data is refused), the
project's layout that data/radar/dataset.py reads::

    mmwave/{clip}{P}.npz   range_time [256, T], doppler_time [128, T],
                           azimuth_time [128, T] float32, P a placement A..H
    texts/{clip}{P}.txt    the clip's caption lines (#0.0#0.0: the whole clip)
    meta/{clip}{P}.json    {"num_frames", "captions", "actions",
                           "order_swapped_captions", "source": {...}}
    _split/{train,val,test}.json   {key: {"filefolder": ".", "fileindex", "captions"}}
    data_info.json         params, radar config, counts of what was skipped and why

and/or (``layout`` "mmexpert" / "both") the public mmExpert layout, so that
mmExpert's own loader (``Text2DopplerDatasetV2``) reads our data with
out_root as its repository root::

    dataset/HumanML3D/udoppler/{clip}A.npy            [T, 128] Doppler-time (time first)
    dataset/HumanML3D/udoppler_rotation/{clip}{P}.npy  every placement (its augmentation)
    dataset/HumanML3D/_split/{train,val,test,all}.json
        {"000000": {"filefolder": "dataset/HumanML3D/udoppler", "fileindex": clip, "captions"}}

Clips (data/radar/humanml3d_source.py) follow HumanML3D's own loader:
whole-motion captions make clip ``{id}``, a ``#start#end`` line a clip of
that segment (``{id}_f{a}-{b}``, frames at 20 fps); too short/long clips are
skipped and counted in data_info.json. Captions are served lower-case
without the trailing period (mmExpert's cleaning). The mmExpert layout gets
every placement for every split (its loader draws a rotation for val and
test too).

Splits: a clip is in the split whose list names it; its placements and its
``M`` mirror go with it (a mirror listed elsewhere is moved to its
original's split, with a warning), so no motion is in two splits. Training
clips get every placement in ``placements``; val and test only
``eval_placements`` (default A), so a gallery holds each motion once.

Beyond HumanML3D, a source may hold ``meta/{id}.json`` ({"actions",
"captions", "order_swapped_captions"}) and ``actions.json`` ({"actions",
"action_prompts"}), as ``--export-sim`` writes for the simulator's own
motions (data/radar/humanml3d_export.py): they are carried over to whole
clips, so temporal-order and zero-shot evaluation work on that data too.

Physics per clip and placement: data/radar/smpl.py (scatterers along the
SMPL-22 bones, positions and velocities from a cubic spline at the radar's
frame rate, placements), the simulator's scene (``sim.add_scene``: a side-wall
multipath image and static clutter) and ``fmcw.radar_maps``.
"""
import argparse
import json
import os
import warnings
import zlib

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from data.cache import UserDataError, ensure_generated, read_marker, resolve_root
from data.radar.fmcw import RadarConfig, radar_maps
from data.radar.humanml3d_export import export_sim_motions
from data.radar.humanml3d_source import SPLITS, plan_clips, source_digest
from data.radar.sim import add_scene
from data.radar.smpl import PLACEMENTS, check_joints, extend, place, resample, scatterers
from data.workers import spawn_context

FORMAT_VERSION = 1   # bump when the simulation changes: it is part of the cache key
HUMANML3D_DEFAULTS = {
    "placements": PLACEMENTS,      # training clips: one clip per radar placement
    "eval_placements": "A",        # val/test clips
    "layout": "project",           # project | mmexpert | both
    "distance": 3.0,               # m, root trajectory's mean on the boresight
    "min_distance": 1.0,           # m, no joint closer to the radar's plane
    "fps": 20.0,                   # HumanML3D's frame rate
    "frame_rate": 20.0,            # radar frames/s
    "min_frames": 40,              # HumanML3D's min_motion_len
    "max_frames": None,            # None: any length
    "scatterers_per_bone": 4,
    "clutter_points": (3, 8),      # as data/radar/sim.py
    "multipath": True,
    "wall_reflection": 0.3,
    "noise_power": 1e-6,
    "noise_looks": 16,
    "gain": 1000.0,
    "dtype": "float32",            # of the maps on disk; float16 halves the disk (the loader reads float32)
    "seed": 0,
}


# ------------------------------------------------------------------ simulation
def simulate_motion(joints, placements, p, name="clip"):
    """SMPL-22 joints [T, 22, 3] (HumanML3D frame, p["fps"]) -> {placement: {view: [bins, N]}}.
    Randomness (scene, noise) from (seed, name, placement): any worker count, same bytes."""
    cfg = RadarConfig(frame_rate=p["frame_rate"])
    radar_pos = np.array([0.0, 0.0, cfg.height])
    pos_h, vel_h = resample(extend(joints), p["fps"], p["frame_rate"])   # [N, 25, 3] each
    out = {}
    for letter in placements:
        rng = np.random.default_rng([int(p["seed"]), zlib.crc32(name.encode()), PLACEMENTS.index(letter)])
        pos, vel = place(pos_h, vel_h, letter, p["distance"], p["min_distance"])
        sp, sv, rcs = scatterers(pos, vel, p["scatterers_per_bone"], radar_pos)
        sp, sv, rcs = add_scene(rng, sp, sv, rcs, p)
        noise = p["noise_power"] * 10 ** rng.uniform(-0.3, 0.3)
        rt, dt, at = radar_maps(sp, sv, rcs, cfg, noise_power=noise, gain=p["gain"], rng=rng,
                                noise_looks=p["noise_looks"])
        out[letter] = {"range_time": rt, "doppler_time": dt, "azimuth_time": at}
    return out


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _write_clip(root, clip, maps, p):
    """Write one clip's placements in the chosen layout(s)."""
    mm = os.path.join(root, "dataset", "HumanML3D")
    for letter, views in maps.items():
        key = clip["name"] + letter
        views = {k: v.astype(p["dtype"]) for k, v in views.items()}
        if p["layout"] in ("project", "both"):
            with open(os.path.join(root, "mmwave", f"{key}.npz"), "wb") as f:
                np.savez(f, **views)
            with open(os.path.join(root, "texts", f"{key}.txt"), "w") as f:
                f.write("".join(f"{c}#{tok}#0.0#0.0\n" for c, tok in clip["lines"]))
            _write_json(os.path.join(root, "meta", f"{key}.json"), {
                "num_frames": int(views["doppler_time"].shape[1]), "captions": clip["captions"],
                "actions": clip["actions"], "order_swapped_captions": clip["swapped"],
                "source": {"id": clip["source"], "frames": clip["frames"], "placement": letter}})
        if p["layout"] in ("mmexpert", "both"):
            dop = np.ascontiguousarray(views["doppler_time"].T)               # [T, 128], time first
            np.save(os.path.join(mm, "udoppler_rotation", f"{clip['name']}{letter}.npy"), dop)
            if letter == "A":
                np.save(os.path.join(mm, "udoppler", f"{clip['name']}A.npy"), dop)


def init_worker():
    # One thread per process: radar_maps' small matrix products run far slower when
    # BLAS/torch threads of several workers fight over the cores.
    threadpool_limits(limits=1)
    torch.set_num_threads(1)


def _simulate_job(job):
    """Worker: every clip of one source motion; returns [(clip dict, written)]."""
    root, path, clips, p = job
    with threadpool_limits(limits=1):
        joints = check_joints(np.load(path), path)
        if not np.all(np.isfinite(joints)):
            return [(c, False) for c in clips]
        for clip in clips:
            a, b = clip["frames"]
            _write_clip(root, clip, simulate_motion(joints[a:b], clip["placements"], p, clip["name"]), p)
        return [(c, True) for c in clips]


# ------------------------------------------------------------------ the dataset
def humanml3d_params(src_dir, **params):
    """Every parameter the output depends on (the cache key): defaults with
    ``params`` applied, the source's absolute path and file-list digest, the
    format version. Worker counts are not among them."""
    unknown = set(params) - set(HUMANML3D_DEFAULTS)
    if unknown:
        raise ValueError(f"simulate_humanml3d: unknown parameters {sorted(unknown)}; expected some "
                         f"of {sorted(HUMANML3D_DEFAULTS)}")
    p = {**HUMANML3D_DEFAULTS, **params}
    p["clutter_points"] = list(p["clutter_points"])
    for key in ("placements", "eval_placements"):
        if not p[key] or set(p[key]) - set(PLACEMENTS) or len(set(p[key])) != len(p[key]):
            raise ValueError(f"simulate_humanml3d: {key}={p[key]!r}; expected distinct letters of {PLACEMENTS}")
    if p["dtype"] not in ("float32", "float16"):
        raise ValueError(f"simulate_humanml3d: dtype={p['dtype']!r}; expected float32 or float16")
    if p["layout"] not in ("project", "mmexpert", "both"):
        raise ValueError(f"simulate_humanml3d: layout={p['layout']!r}; expected project, mmexpert or both")
    if p["layout"] != "project" and "A" not in p["placements"]:
        raise ValueError("simulate_humanml3d: the mmExpert layout needs placement A in placements "
                         "(its loader reads udoppler/{id}A.npy)")
    src = resolve_root(src_dir)
    if not os.path.isdir(src):
        raise UserDataError(f"{src}: HumanML3D folder not found")
    p.update(source=src, source_digest=source_digest(src), format_version=FORMAT_VERSION)
    return p


def build_humanml3d(src, root, p, workers=1, plan=None):
    """Simulate every clip of ``src`` into the new folder ``root`` (no cache rule: see
    ``simulate_humanml3d``; ``plan``: ``plan_clips``'s result). Returns data_info's dict."""
    jobs, skipped = plan if plan is not None else plan_clips(src, p)
    skipped = dict(skipped)
    dirs = ["mmwave", "texts", "meta", "_split"] if p["layout"] != "mmexpert" else []
    if p["layout"] != "project":
        dirs += [os.path.join("dataset", "HumanML3D", d) for d in ("udoppler", "udoppler_rotation", "_split")]
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    tasks = [(root, path, clips, p) for path, clips in jobs]
    n_clips = sum(len(c) for _, c in jobs)
    if workers > 1:
        with spawn_context() as ctx, ctx.Pool(workers, initializer=init_worker) as pool:  # data/workers.py
            results = list(tqdm(pool.imap(_simulate_job, tasks, chunksize=4), total=len(tasks),
                                desc=f"HumanML3D -> radar ({n_clips} clips)", mininterval=5))
    else:
        results = [_simulate_job(t) for t in tqdm(tasks, desc=f"HumanML3D -> radar ({n_clips} clips)",
                                                  mininterval=5)]
    done = [r for rs in results for r in rs]
    skipped["non_finite"] = sum(1 for _, ok in done if not ok)
    split_json, mm_json = {s: {} for s in SPLITS}, {s: {} for s in SPLITS}
    for clip, ok in done:
        if not ok:
            continue
        s = clip["split"]
        keep = clip["placements"] if s == "train" else p["eval_placements"]
        for letter in keep:
            key = clip["name"] + letter
            split_json[s][key] = {"filefolder": ".", "fileindex": key, "captions": clip["captions"]}
        mm_json[s][clip["name"]] = {"filefolder": "dataset/HumanML3D/udoppler", "fileindex": clip["name"],
                                    "captions": clip["captions"]}
    counts = {k: n for k, n in skipped.items() if n and k != "mirror_moved"}
    if counts:
        warnings.warn(f"{src}: skipped {counts} (motions, clips or caption lines; data_info.json "
                      "'skipped'; short/long: min_frames/max_frames)")
    if skipped["mirror_moved"]:
        warnings.warn(f"{src}: {skipped['mirror_moved']} mirrored M-ids listed in another split than their "
                      "original; put in the original's split")
    if p["layout"] != "mmexpert":
        for s in SPLITS:
            _write_json(os.path.join(root, "_split", f"{s}.json"), split_json[s])
    if p["layout"] != "project":
        mm_split = os.path.join(root, "dataset", "HumanML3D", "_split")
        mm_json["all"] = {f"{s}/{k}": e for s in SPLITS for k, e in mm_json[s].items()}
        for s, entries in mm_json.items():   # mmExpert's keys: 000000, 000001, ...
            _write_json(os.path.join(mm_split, f"{s}.json"),
                        {f"{i:06d}": e for i, e in enumerate(entries.values())})
    actions = {}
    if os.path.isfile(os.path.join(src, "actions.json")):
        with open(os.path.join(src, "actions.json")) as f:
            actions = json.load(f)
    info = {"params": p, "radar": RadarConfig(frame_rate=p["frame_rate"]).as_dict(),
            "actions": actions.get("actions", []), "action_prompts": actions.get("action_prompts", {}),
            "splits": {s: len(split_json[s]) for s in SPLITS},
            "motions": {s: len(mm_json[s]) for s in SPLITS}, "skipped": skipped}
    _write_json(os.path.join(root, "data_info.json"), info)
    return info


def simulate_humanml3d(src_dir, out_root, workers=1, **params):
    """The absolute ``out_root`` holding the radar views of every clip of the
    HumanML3D folder ``src_dir`` (simulated unless a finished build for the same
    parameters and source is there; the rules of data/cache.py)."""
    p = humanml3d_params(src_dir, **params)
    if os.path.commonpath([p["source"], resolve_root(out_root)]) == p["source"]:
        raise UserDataError(f"{resolve_root(out_root)}: inside the HumanML3D folder {p['source']}; "
                            "expected the output elsewhere (the source is never written into)")
    cached = read_marker(resolve_root(out_root)) if os.path.isdir(resolve_root(out_root)) else None
    # the source is read (and its errors raised) before anything is written
    same = cached is not None and cached.get("params") == json.loads(json.dumps(p, default=str))
    plan = None if same else plan_clips(p["source"], p)
    return ensure_generated(out_root, p, lambda tmp: build_humanml3d(p["source"], tmp, p, workers, plan),
                            "radar views of HumanML3D motions")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m data.radar.humanml3d", description=__doc__.split("\n")[0])
    ap.add_argument("--src", help="HumanML3D folder (new_joints/, texts/, train/val/test.txt)")
    ap.add_argument("--out", required=True, help="output folder (new, empty, or an earlier build)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--placements", default=HUMANML3D_DEFAULTS["placements"])
    ap.add_argument("--eval-placements", default=HUMANML3D_DEFAULTS["eval_placements"])
    ap.add_argument("--layout", default="project", choices=("project", "mmexpert", "both"))
    ap.add_argument("--min-frames", type=int, default=HUMANML3D_DEFAULTS["min_frames"])
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                    help="maps on disk (a full HumanML3D build, 8 placements: ~60 GB float32)")
    ap.add_argument("--export-sim", type=int, metavar="N", help="instead: write N of the simulator's own "
                    "motions as a HumanML3D-format folder into --out")
    ap.add_argument("--num-val", type=int, default=None, help="--export-sim: val motions (default N/10, at least 1)")
    ap.add_argument("--num-test", type=int, default=None, help="--export-sim: test motions (default N/10, at least 1)")
    a = ap.parse_args(argv)
    if a.export_sim is not None:
        n_val = a.num_val if a.num_val is not None else max(1, a.export_sim // 10)
        n_test = a.num_test if a.num_test is not None else max(1, a.export_sim // 10)
        if a.export_sim - n_val - n_test < 1:
            ap.error(f"--export-sim {a.export_sim}: no training motions left after {n_val} val + {n_test} test")
        out = export_sim_motions(a.out, a.export_sim - n_val - n_test, n_val, n_test, seed=a.seed)
        print(f"wrote {a.export_sim} simulator motions as HumanML3D (SMPL-22 new_joints) to {out}")
        return
    if not a.src:
        ap.error("--src is required (or --export-sim N)")
    out = simulate_humanml3d(a.src, a.out, workers=a.workers, placements=a.placements,
                             eval_placements=a.eval_placements, layout=a.layout, min_frames=a.min_frames,
                             max_frames=a.max_frames, seed=a.seed, dtype=a.dtype)
    with open(os.path.join(out, "data_info.json")) as f:
        info = json.load(f)
    print(f"{out}: {info['splits']} radar clips from {info['motions']} motions; skipped {info['skipped']}")


if __name__ == "__main__":
    main()
