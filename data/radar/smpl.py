"""SMPL-22 skeletons (HumanML3D's ``new_joints``) as radar scatterers.

HumanML3D frame: metres, Y up, the subject faces +Z at frame 0, so +X is
the subject's left (SMPL's left joints have x > 0); 20 frames/s. The
radar's world frame (data/radar/fmcw.py, data/radar/motion.py) is x to the
radar's right, y away from the radar (boresight), z up.

Body model: the simulator's (data/radar/sim.py): points spread evenly along
each bone, each bone a prolate ellipsoid whose RCS depends on the aspect it
shows the radar (``sim.segment_rcs``), radii as the simulator's Kinect-20
segments. SMPL-22 ends at the wrists and at the base of the skull, so three
segments are extended past the last joint (a hand along the forearm, the
crown along neck -> head): without them the hands, which carry much of the
micro-Doppler of waving or clapping, would be missing.

Placements: mmExpert's eight rotated copies A..H. Placement k turns the
subject by k * 45 degrees counter-clockwise (seen from above) before it is
put in front of the radar: A faces the radar, C faces the radar's right
(+x), E has its back to the radar, G faces the radar's left. The root
trajectory's mean is put on the boresight ``distance`` m away, pushed back
until no joint comes closer than ``min_distance`` m.
"""
import numpy as np
from scipy.interpolate import CubicSpline

from data.cache import UserDataError
from data.radar.sim import segment_rcs

SMPL22 = ("pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle", "r_ankle",
          "spine3", "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head", "l_shoulder",
          "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist")
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
# Joints swapped by a left/right mirror (HumanML3D's M-prefixed copies).
MIRROR_PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21))
# Virtual end points appended as joints 22..24: (name, from joint, to joint, length in m);
# the point lies `length` beyond `to` along from -> to.
EXTENSIONS = (("l_hand", 18, 20, 0.08), ("r_hand", 19, 21, 0.08), ("crown", 12, 15, 0.17))
# Bones (parent, child) with ellipsoid radius (m), as sim.SEGMENT_RADIUS for the same body part.
BONES = ((0, 3, 0.15), (3, 6, 0.15), (6, 9, 0.15),                  # pelvis -> spine3: torso
         (9, 12, 0.06), (12, 15, 0.06), (15, 24, 0.09),              # neck, head base, head
         (0, 1, 0.10), (0, 2, 0.10), (1, 4, 0.07), (2, 5, 0.07),     # hips, thighs
         (4, 7, 0.05), (5, 8, 0.05), (7, 10, 0.04), (8, 11, 0.04),   # shanks, feet
         (9, 13, 0.06), (9, 14, 0.06), (13, 16, 0.06), (14, 17, 0.06),  # collars, shoulders
         (16, 18, 0.045), (17, 19, 0.045), (18, 20, 0.035), (19, 21, 0.035),  # upper arms, forearms
         (20, 22, 0.03), (21, 23, 0.03))                             # hands
PLACEMENTS = "ABCDEFGH"


def check_joint_shape(shape, path):
    """A HumanML3D new_joints array must be [T, 22, 3] with T >= 2."""
    if len(shape) != 3 or tuple(shape[1:]) != (22, 3) or shape[0] < 2:
        raise UserDataError(f"{path}: joints of shape {tuple(shape)}; expected [T, 22, 3] with T >= 2 "
                            "(HumanML3D new_joints: SMPL-22 positions in metres, Y up)")


def check_joints(joints, path):
    """``joints`` checked (``check_joint_shape``) as float64."""
    joints = np.asarray(joints)
    check_joint_shape(joints.shape, path)
    return joints.astype(np.float64)


def mirror(joints):
    """Left/right mirror of SMPL-22 joints in HumanML3D's frame (x negated, sides swapped)."""
    out = joints.copy()
    out[..., 0] = -out[..., 0]
    for a, b in MIRROR_PAIRS:
        out[:, [a, b]] = out[:, [b, a]]
    return out


def extend(joints):
    """[T, 22, 3] -> [T, 25, 3]: the hands and the crown appended (EXTENSIONS)."""
    ext = []
    for _, a, b, length in EXTENSIONS:
        d = joints[:, b] - joints[:, a]
        ext.append(joints[:, b] + length * d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-6))
    return np.concatenate([joints, np.stack(ext, 1)], 1)


def resample(joints, fps, frame_rate):
    """Positions and velocities at the radar's frame times from a cubic spline
    through the motion's frames; velocities are the spline's derivative, not
    frame differences (a 20-fps difference is a 25 ms-late, smoothed velocity,
    which blurs the Doppler of fast limbs). joints [T, J, 3] -> ([N, J, 3],) * 2."""
    t = np.arange(len(joints)) / fps
    n = int(np.floor(t[-1] * frame_rate + 1e-9)) + 1
    tr = np.arange(n) / frame_rate
    spline = CubicSpline(t, joints, axis=0)      # not-a-knot: constant velocity is exact
    return spline(tr), spline(tr, 1)


def _to_world(x, angle):
    """HumanML3D frame -> radar world frame, subject turned by `angle` (rad) CCW about the vertical.
    At angle 0 the subject's facing (+Z) points at the radar (-y)."""
    w = np.stack([x[..., 0], -x[..., 2], x[..., 1]], -1)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * w[..., 0] - s * w[..., 1], s * w[..., 0] + c * w[..., 1], w[..., 2]], -1)


def place(pos, vel, placement, distance=3.0, min_distance=1.0):
    """Positions/velocities [N, J, 3] (HumanML3D frame) -> radar world frame at a placement letter."""
    k = PLACEMENTS.index(placement)
    p, v = _to_world(pos, k * np.pi / 4), _to_world(vel, k * np.pi / 4)
    centre = p[:, 0, :2].mean(0)
    p[..., 0] -= centre[0]
    p[..., 1] += distance - centre[1]
    p[..., 1] += max(0.0, min_distance - float(p[..., 1].min()))
    return p, v


def scatterers(joints, vel, per_bone, radar_pos):
    """Points along each bone of extended joints [N, 25, 3]: positions,
    velocities [N, B * per_bone, 3] and RCS [N, B * per_bone] (m^2)."""
    u = (np.arange(per_bone) + 0.5) / per_bone                       # [K] along the bone
    a = np.array([p for p, _, _ in BONES])
    b = np.array([c for _, c, _ in BONES])
    pos = joints[:, a, None] * (1 - u)[:, None] + joints[:, b, None] * u[:, None]   # [N, B, K, 3]
    v = vel[:, a, None] * (1 - u)[:, None] + vel[:, b, None] * u[:, None]
    seg = joints[:, b] - joints[:, a]                                # [N, B, 3]
    length = np.linalg.norm(seg, axis=-1)
    axis = seg / np.maximum(length, 1e-6)[..., None]
    los = (joints[:, a] + joints[:, b]) / 2 - radar_pos
    los /= np.maximum(np.linalg.norm(los, axis=-1, keepdims=True), 1e-6)
    radius = np.array([r for _, _, r in BONES])
    rcs = segment_rcs(axis, los, length / 2, radius) / per_bone      # [N, B]
    n = joints.shape[0]
    return pos.reshape(n, -1, 3), v.reshape(n, -1, 3), np.repeat(rcs, per_bone, axis=1)


# ------------------------------------------------- the simulator's skeleton as SMPL-22
# Kinect-20 joint (data/radar/motion.py JOINTS) or (joint, joint, fraction) per SMPL-22 joint:
# SMPL's spine has three joints and a neck where Kinect has spine and shoulder_center.
FROM_KINECT = ("hip_center", "hip_l", "hip_r", "spine", "knee_l", "knee_r",
               ("spine", "shoulder_center", 0.45), "ankle_l", "ankle_r",
               ("spine", "shoulder_center", 0.75), "foot_l", "foot_r", "shoulder_center",
               ("shoulder_center", "shoulder_l", 0.45), ("shoulder_center", "shoulder_r", 0.45),
               ("shoulder_center", "head", 0.5), "shoulder_l", "shoulder_r", "elbow_l", "elbow_r",
               "wrist_l", "wrist_r")


def kinect_to_humanml3d(joints, names):
    """The simulator's joints [T, 20, 3] (world frame, `names` = motion.JOINTS) -> SMPL-22
    [T, 22, 3] canonicalised as HumanML3D's processing does: Y up, floor at y = 0,
    facing +Z at frame 0 (from hips and shoulders), root at x = z = 0 at frame 0."""
    idx = {n: i for i, n in enumerate(names)}
    cols = []
    for spec in FROM_KINECT:
        if isinstance(spec, str):
            cols.append(joints[:, idx[spec]])
        else:
            a, b, f = spec
            cols.append((1 - f) * joints[:, idx[a]] + f * joints[:, idx[b]])
    w = np.stack(cols, 1)                                            # [T, 22, 3] world
    h = np.stack([w[..., 0], w[..., 2], -w[..., 1]], -1)             # inverse of _to_world(., 0)
    across = (h[0, 2] - h[0, 1]) + (h[0, 17] - h[0, 16])             # right minus left
    fwd = np.cross([0.0, 1.0, 0.0], across)
    ang = np.arctan2(fwd[0], fwd[2])                                 # heading of +Z -> fwd
    c, s = np.cos(-ang), np.sin(-ang)
    h = np.stack([c * h[..., 0] + s * h[..., 2], h[..., 1], -s * h[..., 0] + c * h[..., 2]], -1)
    h[..., 1] -= h[..., 1].min()
    h[..., 0] -= h[0, 0, 0]
    h[..., 2] -= h[0, 0, 2]
    return h
