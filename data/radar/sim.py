"""Simulated mmWave radar + text dataset in the mmExpert / HumanML3D format.

``generate_radar_dataset(root, num_train, num_val, num_test, seed=0,
workers=1, **params)`` writes, under ``root``::

    mmwave/{id}.npz    range_time (256, T), doppler_time (128, T),
                       azimuth_time (128, T) float32 (radar maps, see
                       data/radar/fmcw.py), plus joints (T, 20, 3) float32
                       (the skeleton at the radar frame rate; extra keys are
                       ignored by the loader, real mmExpert files lack it)
    texts/{id}.txt     HumanML3D lines ``caption#word/POS ...#0.0#0.0``
    meta/{id}.json     {"actions": [{"name", "start", "end", "params"}, ...]
                       (times in s, in order), "captions": [...] (cleaned
                       as the loader serves them: lower case, no period),
                       "order_swapped_captions": [...] (index-aligned with
                       captions: caption k with the actions in another
                       order; [] for one-action clips),
                       "num_frames": T}
                       captions from params["captions"]: template (the
                       simulator's stream, right after the clip) or diverse
                       (a stream of their own: the clip is the same bytes)
    _split/{train,val,test}.json
                       {id: {"filefolder": ".", "fileindex": id,
                       "captions": [...]}}; filefolder is the folder, relative
                       to root, holding mmwave/ and texts/ (meta/ too).
    data_info.json     {"params": generator parameters, "radar": RadarConfig,
                       "actions": [names], "action_prompts": {name: prompt},
                       "splits": counts}

Ids are ``{index:06d}``: train, then val, then test, so the splits are
disjoint by construction; each clip has its own subject, start position and
action chain, drawn from ``np.random.default_rng([seed, index])``, so val and
test differ and any worker count gives the same bytes.

``ensure_radar_dataset`` goes through the one cache rule of data/cache.py:
the marker records every generator parameter (``generator_params``), the
data are built in a temporary folder and renamed into place, so files inside
need no atomic writes of their own; a folder of somebody else's data is
refused.

Simulation of one clip: ``actions.sample_clip`` chains 1-3 actions
(5-11 s), ``motion.forward_kinematics`` poses a 20-joint skeleton at
100 Hz; scatterers are points along each bone with the bone's ellipsoid RCS
(``segment_rcs``), velocities are time derivatives of their positions; static
clutter points and, optionally, multipath via a side wall are added (image
method: the body mirrored in the wall, i.e. the radar-wall-body-wall-radar
path, attenuated by the wall's power reflection coefficient); ``fmcw.radar_maps`` turns them into the
three maps at 20 frames/s.
"""
import json
import os

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from data.cache import ensure_generated
from data.radar.actions import ACTION_NAMES, sample_clip
from data.radar.fmcw import RadarConfig, radar_maps
from data.radar.motion import BONES, J, forward_kinematics, sample_body
from data.radar.captions import GENERATORS, clip_captions
from data.radar.text import ACTION_PROMPTS, clean_caption, humanml3d_lines
from data.workers import spawn_context

FORMAT_VERSION = 3   # bump when the simulation changes: it is part of the cache key
GENERATOR_DEFAULTS = {
    "min_duration": 5.0,        # s; T = 100 frames at 20 frames/s (mmExpert keeps T >= 100)
    "max_duration": 11.0,       # s; T < 500 always
    "scatterers_per_bone": 4,
    "clutter_points": (3, 8),   # static reflectors per clip (walls, furniture)
    "multipath": True,          # mirror images behind a side wall
    "wall_reflection": 0.3,     # power reflection coefficient of that wall
    "noise_power": 1e-6,        # relative to gain^2; x0.5..2 per clip
    "noise_looks": 16,
    "gain": 1000.0,             # ADC-like amplitude units
    "num_captions": 4,
    "captions": "template",     # data.captions: template (data/radar/text.py) | diverse (data/radar/captions.py)
    "max_words": 20,            # = seed 001's max_text_len
    "frame_rate": 20.0,
}
# Ellipsoid radius (m) of each bone, by the bone's child joint.
SEGMENT_RADIUS = {"spine": 0.15, "shoulder_center": 0.15, "head": 0.09, "shoulder_l": 0.06, "shoulder_r": 0.06,
                  "elbow_l": 0.045, "elbow_r": 0.045, "wrist_l": 0.035, "wrist_r": 0.035, "hand_l": 0.03,
                  "hand_r": 0.03, "hip_l": 0.1, "hip_r": 0.1, "knee_l": 0.07, "knee_r": 0.07,
                  "ankle_l": 0.05, "ankle_r": 0.05, "foot_l": 0.04, "foot_r": 0.04}


def segment_rcs(axis, los, half_len, radius):
    """RCS (m^2) of a prolate ellipsoid seen along `los` (Chen, *The Micro-Doppler Effect in Radar*).

    axis, los: [..., 3] unit vectors; sigma = pi r^4 c^2 / (r^2 sin^2 t + c^2 cos^2 t)^2
    with semi-axes (r, r, c): broadside pi c^2, end-on pi r^4 / c^2.
    """
    cos2 = np.clip(np.einsum("...c,...c->...", axis, los) ** 2, 0, 1)
    c, r = np.maximum(half_len, radius), radius
    return np.pi * r ** 4 * c ** 2 / (r ** 2 * (1 - cos2) + c ** 2 * cos2) ** 2


def body_scatterers(joints, vel, per_bone, radar_pos):
    """Points along each bone: positions, velocities [N, P, 3] and RCS [N, P]."""
    u = (np.arange(per_bone) + 0.5) / per_bone                      # [K] along the bone
    a = np.array([J[p] for p, _ in BONES])
    b = np.array([J[c] for _, c in BONES])
    pos = joints[:, a, None] * (1 - u)[:, None] + joints[:, b, None] * u[:, None]   # [N, B, K, 3]
    v = vel[:, a, None] * (1 - u)[:, None] + vel[:, b, None] * u[:, None]
    seg = joints[:, b] - joints[:, a]                               # [N, B, 3]
    length = np.linalg.norm(seg, axis=-1)
    axis = seg / np.maximum(length, 1e-6)[..., None]
    mid = (joints[:, a] + joints[:, b]) / 2
    los = mid - radar_pos
    los /= np.linalg.norm(los, axis=-1, keepdims=True)
    radius = np.array([SEGMENT_RADIUS[c] for _, c in BONES])
    rcs = segment_rcs(axis, los, length / 2, radius) / per_bone      # [N, B]
    n = joints.shape[0]
    return pos.reshape(n, -1, 3), v.reshape(n, -1, 3), np.repeat(rcs, per_bone, axis=1)


def add_scene(rng, pos, vel, rcs, params):
    """The scene around the body: optionally a side wall's mirror image
    (multipath; the wall at x = wall, beyond the farthest point the body
    reaches on that side) and static clutter points (walls, furniture).
    pos, vel [T, P, 3], rcs [T, P] -> the same with the added points."""
    if params["multipath"]:
        side = rng.choice([-1.0, 1.0])
        wall = side * (max(float((side * pos[..., 0]).max()), 0.0) + rng.uniform(0.5, 2.5))
        mpos, mv = pos.copy(), vel.copy()
        mpos[..., 0], mv[..., 0] = 2 * wall - pos[..., 0], -vel[..., 0]
        pos, vel = np.concatenate([pos, mpos], 1), np.concatenate([vel, mv], 1)
        rcs = np.concatenate([rcs, params["wall_reflection"] * rcs], 1)
    lo, hi = params["clutter_points"]
    if hi > 0:
        k, t_len = int(rng.integers(lo, hi + 1)), pos.shape[0]
        r, az = rng.uniform(1.5, 10.0, k), rng.uniform(-1.2, 1.2, k)
        cpos = np.stack([r * np.sin(az), r * np.cos(az), rng.uniform(0, 2.0, k)], -1)
        pos = np.concatenate([pos, np.broadcast_to(cpos, (t_len, k, 3))], 1)
        vel = np.concatenate([vel, np.zeros((t_len, k, 3))], 1)
        rcs = np.concatenate([rcs, np.broadcast_to(10 ** rng.uniform(-3, -1.5, k), (t_len, k))], 1)
    return pos, vel, rcs


def simulate_clip(rng, params, cfg):
    """One clip: (maps dict of float32 [bins, T], actions, joints [T, 20, 3])."""
    fine = 5 * params["frame_rate"]
    body = sample_body(rng)
    pose, actions = sample_clip(rng, body, min_duration=params["min_duration"],
                                max_duration=params["max_duration"], fine_rate=fine)
    joints = forward_kinematics(pose, body)                          # [N, 20, 3] at `fine` Hz
    vel = np.gradient(joints, 1.0 / fine, axis=0)
    frames = np.arange(0, len(joints), 5)                            # radar frames
    joints, vel = joints[frames], vel[frames]
    radar_pos = np.array([0.0, 0.0, cfg.height])
    pos, v, rcs = body_scatterers(joints, vel, params["scatterers_per_bone"], radar_pos)
    pos, v, rcs = add_scene(rng, pos, v, rcs, params)
    noise = params["noise_power"] * 10 ** rng.uniform(-0.3, 0.3)
    rt, dt, at = radar_maps(pos, v, rcs, cfg, noise_power=noise, gain=params["gain"],
                            rng=rng, noise_looks=params["noise_looks"])
    maps = {"range_time": rt, "doppler_time": dt, "azimuth_time": at}
    return maps, actions, joints.astype(np.float32)


# ------------------------------------------------------------------ file I/O
def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _clip_id(index):
    return f"{index:06d}"


def _make_clip(job):
    """Worker: simulate and write clip `index`; return (id, captions)."""
    # One BLAS thread per process: the small matrix products of radar_maps
    # run ~15x slower when OpenBLAS threads fight over 2 cores.
    with threadpool_limits(limits=1, user_api="blas"):
        return _make_clip_inner(*job)


def _make_clip_inner(root, index, seed, params):
    cid = _clip_id(index)
    meta_path = os.path.join(root, "meta", f"{cid}.json")
    rng = np.random.default_rng([seed, index])
    cfg = RadarConfig(frame_rate=params["frame_rate"])
    maps, actions, joints = simulate_clip(rng, params, cfg)
    captions, swapped = clip_captions(actions, params, index, rng)
    with open(os.path.join(root, "mmwave", f"{cid}.npz"), "wb") as f:
        np.savez(f, joints=joints, **maps)
    with open(os.path.join(root, "texts", f"{cid}.txt"), "w") as f:
        f.write(humanml3d_lines(captions))
    # meta holds captions as the loader serves them (clean_caption), so a swapped
    # caption differs from its true one only in the order of the actions.
    _write_json(meta_path, {"actions": actions, "captions": [clean_caption(c) for c in captions],
                            "order_swapped_captions": [clean_caption(c) for c in swapped],
                            "num_frames": int(maps["range_time"].shape[1])})
    return cid, captions


def generator_params(num_train, num_val, num_test, seed=0, **params):
    """Every parameter the generated bytes depend on (the cache key): the
    defaults with ``params`` applied, the split sizes, the seed and the
    format version. The worker count is not one: any count gives the same bytes."""
    unknown = set(params) - set(GENERATOR_DEFAULTS)
    if unknown:
        raise ValueError(f"generate_radar_dataset: unknown parameters {sorted(unknown)}; "
                         f"expected some of {sorted(GENERATOR_DEFAULTS)}")
    resolved = {**GENERATOR_DEFAULTS, **params}
    if resolved["captions"] not in GENERATORS:
        raise ValueError(f"generate_radar_dataset: captions={resolved['captions']!r}; expected one of "
                         f"{list(GENERATORS)} (data.captions)")
    if resolved["captions"] == "template":
        del resolved["captions"]  # the marker of data from before data.captions existed: same folder
    resolved["clutter_points"] = list(resolved["clutter_points"])
    resolved.update(num_train=int(num_train), num_val=int(num_val), num_test=int(num_test), seed=int(seed),
                    format_version=FORMAT_VERSION)
    return resolved


def generate_radar_dataset(root, num_train, num_val, num_test, seed=0, workers=1, **params):
    """Write the dataset into root, a new or empty folder (see the module
    docstring); returns None. ``ensure_radar_dataset`` is the cached entry point."""
    p = generator_params(num_train, num_val, num_test, seed, **params)
    os.makedirs(root, exist_ok=True)
    info = {"params": p, "radar": RadarConfig(frame_rate=p["frame_rate"]).as_dict(),
            "actions": list(ACTION_NAMES), "action_prompts": dict(ACTION_PROMPTS),
            "splits": {"train": p["num_train"], "val": p["num_val"], "test": p["num_test"]}}
    _write_json(os.path.join(root, "data_info.json"), info)
    for sub in ("mmwave", "texts", "meta", "_split"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    n = p["num_train"] + p["num_val"] + p["num_test"]
    jobs = [(root, i, p["seed"], p) for i in range(n)]
    if workers > 1:
        with spawn_context() as ctx, ctx.Pool(workers) as pool:     # data/workers.py
            results = list(tqdm(pool.imap(_make_clip, jobs, chunksize=8), total=n, desc="radar clips",
                                mininterval=5))
    else:
        results = [_make_clip(j) for j in tqdm(jobs, desc="radar clips", mininterval=5)]
    bounds = {"train": (0, p["num_train"]), "val": (p["num_train"], p["num_train"] + p["num_val"]),
              "test": (p["num_train"] + p["num_val"], n)}
    for split, (lo, hi) in bounds.items():
        _write_json(os.path.join(root, "_split", f"{split}.json"),
                    {cid: {"filefolder": ".", "fileindex": cid, "captions": caps}
                     for cid, caps in results[lo:hi]})


def ensure_radar_dataset(root, num_train, num_val, num_test, seed=0, workers=1, **params):
    """The absolute root holding the dataset for these parameters, generated
    unless a finished one is there (data/cache.py: relative roots resolve
    against the current directory; a folder of real data is refused; runs
    started together take turns, the second finds the first's data)."""
    p = generator_params(num_train, num_val, num_test, seed, **params)

    def build(tmp):
        generate_radar_dataset(tmp, num_train, num_val, num_test, seed=seed, workers=workers, **params)
    return ensure_generated(root, p, build, "radar clips")
