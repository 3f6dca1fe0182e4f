"""Constructed SMPL-22 motions in HumanML3D's frame (Y up, facing +Z, +X the
subject's left, 20 fps) for the HumanML3D -> radar tests and benchmark."""
import numpy as np

# A standing SMPL-22 skeleton relative to the pelvis (m), joint order of data/radar/smpl.py.
REST = np.array([
    [0, 0, 0], [0.09, -0.08, 0], [-0.09, -0.08, 0], [0, 0.10, 0], [0.09, -0.48, 0], [-0.09, -0.48, 0],
    [0, 0.24, 0], [0.09, -0.88, 0], [-0.09, -0.88, 0], [0, 0.30, 0], [0.09, -0.93, 0.12],
    [-0.09, -0.93, 0.12], [0, 0.52, 0], [0.07, 0.42, 0], [-0.07, 0.42, 0], [0, 0.62, 0],
    [0.18, 0.42, 0], [-0.18, 0.42, 0], [0.20, 0.14, 0], [-0.20, 0.14, 0], [0.21, -0.10, 0],
    [-0.21, -0.10, 0]])
LEGS = ((4, 7, 10), (5, 8, 11))   # knee, ankle, foot; swung about the hip (index - 3)
ARMS = ((18, 20), (19, 21))       # elbow, wrist; swung about the shoulder (index - 2)


def _swing(points, pivot, angle):
    """Rotate points [T, K, 3] about the x axis through pivot [T, 1, 3]; angle > 0 swings forward (+z)."""
    d = points - pivot
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([d[..., 0], c * d[..., 1] + s * d[..., 2], -s * d[..., 1] + c * d[..., 2]], -1) + pivot


def walk(frames, speed, fps=20.0, swing=0.4, lateral=0.0, raise_left_arm=False):
    """A subject walking forward (+Z) at ``speed`` m/s (0: standing still), legs and
    arms swinging at a cadence of one stride per 1.4 m; ``lateral`` m/s drift
    along +X (the subject's left). Returns [frames, 22, 3]."""
    t = np.arange(frames) / fps
    a = swing * np.sin(2 * np.pi * speed / 1.4 * t) if speed > 0 else np.zeros(frames)
    out = np.repeat(REST[None], frames, 0).astype(np.float64)
    for leg, ang in zip(LEGS, (a, -a)):
        out[:, list(leg)] = _swing(out[:, list(leg)], out[:, [leg[0] - 3]], ang)
    for k, (arm, ang) in enumerate(zip(ARMS, (-0.6 * a, 0.6 * a))):
        if k == 0 and raise_left_arm:
            ang = np.full(frames, 2.4)            # the left arm held up, forwards
        out[:, list(arm)] = _swing(out[:, list(arm)], out[:, [arm[0] - 2]], ang)
    out[..., 1] += 0.95
    out[..., 2] += (speed * t)[:, None]
    out[..., 0] += (lateral * t)[:, None]
    return out
