"""The simulator's own motions as a HumanML3D-format folder.

``export_sim_motions(out, num_train, num_val, num_test, seed=0, **sim_params)``
writes clip ``{index:06d}`` of the native generator (data/radar/sim.py, same
seed, counts and parameters: the same subject, actions, joints and captions,
drawn from the same random stream) as HumanML3D holds motions::

    new_joints/{id}.npy   [T, 22, 3] float32 SMPL-22 joints, Y up, 20 fps,
                          canonicalised as HumanML3D's processing does
                          (data/radar/smpl.py ``kinect_to_humanml3d``)
    texts/{id}.txt        caption#tok/POS ...#0.0#0.0
    train.txt val.txt test.txt all.txt
    meta/{id}.json        {"actions", "captions", "order_swapped_captions"}  (not in HumanML3D)
    actions.json          {"actions", "action_prompts"}                     (not in HumanML3D)

so ``simulate_humanml3d`` on that folder trains and evaluates on the same
motions and captions as the native data, through the HumanML3D path
(SMPL-22 bones, spline velocities, placements A..H) -- the issue's
comparison. The two extra files let temporal-order and zero-shot evaluation
run there too. The folder is written through data/cache.py (marker, never
into somebody else's folder).
"""
import json
import os

import numpy as np
from tqdm import tqdm

from data.cache import ensure_generated
from data.radar.actions import ACTION_NAMES
from data.radar.fmcw import RadarConfig
from data.radar.motion import JOINTS
from data.radar.sim import generator_params, simulate_clip
from data.radar.smpl import kinect_to_humanml3d
from data.radar.captions import clip_captions
from data.radar.text import ACTION_PROMPTS, clean_caption, humanml3d_lines

HUMANML3D_FPS = 20.0


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def sim_motion(index, p):
    """Clip ``index`` of the native generator with parameters ``p`` (generator_params):
    (SMPL-22 joints [T, 22, 3] in HumanML3D's frame, actions, captions, swapped)."""
    # the draws of data/radar/sim.py's _make_clip_inner, in its order
    rng = np.random.default_rng([p["seed"], index])
    _, actions, joints = simulate_clip(rng, p, RadarConfig(frame_rate=p["frame_rate"]))
    captions, swapped = clip_captions(actions, p, index, rng)
    return kinect_to_humanml3d(joints, JOINTS), actions, captions, swapped


def write_sim_motions(root, p):
    for sub in ("new_joints", "texts", "meta"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    n = p["num_train"] + p["num_val"] + p["num_test"]
    ids = [f"{i:06d}" for i in range(n)]
    for i in tqdm(range(n), desc="simulator motions -> HumanML3D", mininterval=5):
        joints, actions, captions, swapped = sim_motion(i, p)
        np.save(os.path.join(root, "new_joints", f"{ids[i]}.npy"), joints.astype(np.float32))
        with open(os.path.join(root, "texts", f"{ids[i]}.txt"), "w") as f:
            f.write(humanml3d_lines(captions))
        _write_json(os.path.join(root, "meta", f"{ids[i]}.json"), {
            "actions": actions, "captions": [clean_caption(c) for c in captions],
            "order_swapped_captions": [clean_caption(c) for c in swapped]})
    bounds = {"train": ids[:p["num_train"]], "val": ids[p["num_train"]:p["num_train"] + p["num_val"]],
              "test": ids[p["num_train"] + p["num_val"]:], "all": ids}
    for split, chosen in bounds.items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("".join(f"{c}\n" for c in chosen))
    _write_json(os.path.join(root, "actions.json"),
                {"actions": list(ACTION_NAMES), "action_prompts": dict(ACTION_PROMPTS)})


def export_sim_motions(out, num_train, num_val, num_test, seed=0, **sim_params):
    """The absolute ``out`` holding the motions (written unless already there)."""
    p = generator_params(num_train, num_val, num_test, seed, **sim_params)
    if p["frame_rate"] != HUMANML3D_FPS:
        raise ValueError(f"export_sim_motions: frame_rate={p['frame_rate']}; HumanML3D motions are "
                         f"{HUMANML3D_FPS:g} fps, so the simulator's joints must be sampled at that rate")
    return ensure_generated(out, {**p, "export": "humanml3d"}, lambda tmp: write_sim_motions(tmp, p),
                            "simulator motions in HumanML3D format")
