"""Procedural human motion: a 20-joint skeleton animated by parametrised actions.

Skeleton: the 20 joints of Kinect v1 (``JOINTS``), bone lengths from
anthropometric ratios of the subject's height (Winter, *Biomechanics and
Motor Control of Human Movement*) with per-subject limb-length variation.

A pose is a small set of angles plus a root (``POSE_KEYS``): trunk pitch,
hip flexion/abduction, knee flexion, shoulder flexion/abduction/yaw, elbow
flexion per side, the root's floor position and heading, and an airborne
height. The pelvis height is not animated: it is set so the lowest joint
touches the floor (feet when standing or sitting, the body when lying), which
keeps every action grounded without foot-placement solvers.

An action (``actions.ACTIONS``) maps (subject, start state, params) to pose curves
on a fine time grid. Every action starts and ends at the neutral pose of its
posture (standing / sitting / lying), with smooth envelopes, so chained
actions join without velocity jumps (which would show up as Doppler spikes).

The actions themselves live in data/radar/actions.py; ``forward_kinematics(
pose, body)`` turns their pose curves into joint positions [N, 20, 3] in the
world frame (x to the radar's right, y away from the radar, z up), in metres.
"""
import numpy as np

JOINTS = ("hip_center", "spine", "shoulder_center", "head",
          "shoulder_l", "elbow_l", "wrist_l", "hand_l",
          "shoulder_r", "elbow_r", "wrist_r", "hand_r",
          "hip_l", "knee_l", "ankle_l", "foot_l",
          "hip_r", "knee_r", "ankle_r", "foot_r")
J = {name: i for i, name in enumerate(JOINTS)}
BONES = (("hip_center", "spine"), ("spine", "shoulder_center"), ("shoulder_center", "head"),
         ("shoulder_center", "shoulder_l"), ("shoulder_l", "elbow_l"), ("elbow_l", "wrist_l"),
         ("wrist_l", "hand_l"), ("shoulder_center", "shoulder_r"), ("shoulder_r", "elbow_r"),
         ("elbow_r", "wrist_r"), ("wrist_r", "hand_r"), ("hip_center", "hip_l"), ("hip_l", "knee_l"),
         ("knee_l", "ankle_l"), ("ankle_l", "foot_l"), ("hip_center", "hip_r"), ("hip_r", "knee_r"),
         ("knee_r", "ankle_r"), ("ankle_r", "foot_r"))

SIDES = ("l", "r")
POSE_KEYS = ("x", "y", "heading", "air", "trunk",
             "hip_flex_l", "hip_flex_r", "hip_abd_l", "hip_abd_r", "knee_l", "knee_r",
             "sh_flex_l", "sh_flex_r", "sh_abd_l", "sh_abd_r", "sh_yaw_l", "sh_yaw_r",
             "elbow_l", "elbow_r")


def sample_body(rng):
    """Subject: height, limb lengths (m) and tempo (speed multiplier of all actions)."""
    h = rng.uniform(1.55, 1.95)
    limb = lambda ratio: ratio * h * rng.uniform(0.95, 1.05)
    return {
        "height": h,
        "pelvis_spine": limb(0.10), "spine_neck": limb(0.19), "neck_head": limb(0.10),
        "shoulder_half": limb(0.12), "upper_arm": limb(0.186), "forearm": limb(0.146),
        "hand": limb(0.06), "hip_half": limb(0.055), "thigh": limb(0.245),
        "shank": limb(0.246), "foot": limb(0.10), "ankle_h": 0.039 * h,
        "tempo": rng.uniform(0.8, 1.25),
    }


def _rot_x(a):  # about the right axis; a > 0 swings a hanging limb (-z) forward (+y)
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def forward_kinematics(pose, body):
    """pose: dict of [N] arrays (POSE_KEYS) -> joints [N, 20, 3], world frame.

    Body frame: x = subject's right, y = facing direction, z = up; heading
    rotates the body frame about z (heading 0 faces +y, away from the radar).
    """
    n = len(pose["x"])
    down = np.array([0.0, 0.0, -1.0])
    out = np.zeros((n, len(JOINTS), 3))
    trunk = _rot_x(-pose["trunk"])                 # [N, 3, 3]; trunk > 0 leans forward
    up = trunk @ np.array([0.0, 0.0, 1.0])                          # [N, 3]
    out[:, J["spine"]] = body["pelvis_spine"] * up
    out[:, J["shoulder_center"]] = out[:, J["spine"]] + body["spine_neck"] * up
    out[:, J["head"]] = out[:, J["shoulder_center"]] + body["neck_head"] * up
    for side, sign in (("l", -1.0), ("r", 1.0)):
        # Arm: flexion in the sagittal plane, abduction outwards, yaw inwards,
        # all relative to the (pitched) trunk.
        sh = out[:, J["shoulder_center"]] + trunk @ np.array([sign * body["shoulder_half"], 0, 0])
        base = trunk @ _rot_z(sign * pose[f"sh_yaw_{side}"]) @ _rot_y(-sign * pose[f"sh_abd_{side}"])
        upper = (base @ _rot_x(pose[f"sh_flex_{side}"])) @ down
        fore = (base @ _rot_x(pose[f"sh_flex_{side}"] + pose[f"elbow_{side}"])) @ down
        out[:, J[f"shoulder_{side}"]] = sh
        out[:, J[f"elbow_{side}"]] = sh + body["upper_arm"] * upper
        out[:, J[f"wrist_{side}"]] = out[:, J[f"elbow_{side}"]] + body["forearm"] * fore
        out[:, J[f"hand_{side}"]] = out[:, J[f"wrist_{side}"]] + body["hand"] * fore
        # Leg: hip flexion forward, abduction outwards; the knee bends the shank back.
        hip = np.array([sign * body["hip_half"], 0.0, 0.0])
        abd = _rot_y(-sign * pose[f"hip_abd_{side}"])
        flex, knee = pose[f"hip_flex_{side}"], pose[f"knee_{side}"]
        thigh = (abd @ _rot_x(flex)) @ down
        shank = (abd @ _rot_x(flex - knee)) @ down
        foot = (abd @ _rot_x(flex - knee)) @ np.array([0.0, 1.0, 0.0])
        out[:, J[f"hip_{side}"]] = hip
        out[:, J[f"knee_{side}"]] = hip + body["thigh"] * thigh
        out[:, J[f"ankle_{side}"]] = out[:, J[f"knee_{side}"]] + body["shank"] * shank
        out[:, J[f"foot_{side}"]] = out[:, J[f"ankle_{side}"]] + body["foot"] * foot
    # Ground contact: the lowest joint rests on the floor (ankles sit ankle_h above it).
    low = np.minimum(out[:, :, 2].min(1), np.minimum(out[:, J["ankle_l"], 2], out[:, J["ankle_r"], 2]) - body["ankle_h"])
    out[:, :, 2] += -low[:, None] + 0.03 + pose["air"][:, None]
    heading = _rot_z(pose["heading"])                               # [N, 3, 3]
    out = np.einsum("nij,nkj->nki", heading, out)
    out[:, :, 0] += pose["x"][:, None]
    out[:, :, 1] += pose["y"][:, None]
    return out


# ---------------------------------------------------------------- neutral poses
def neutral(posture, n):
    """Pose angles (no root) of a posture, as [n] arrays."""
    p = {k: np.zeros(n) for k in POSE_KEYS if k not in ("x", "y", "heading")}
    p["elbow_l"][:] = p["elbow_r"][:] = 0.15
    p["sh_abd_l"][:] = p["sh_abd_r"][:] = 0.08
    if posture == "sitting":
        p["hip_flex_l"][:] = p["hip_flex_r"][:] = np.pi / 2
        p["knee_l"][:] = p["knee_r"][:] = np.pi / 2
        p["trunk"][:] = 0.1
        p["sh_flex_l"][:] = p["sh_flex_r"][:] = 0.5
        p["elbow_l"][:] = p["elbow_r"][:] = 0.6
    elif posture == "lying_front":   # prone: trunk tipped forward, legs extended back
        p["trunk"][:] = np.pi / 2
        p["hip_flex_l"][:] = p["hip_flex_r"][:] = -np.pi / 2
        p["sh_flex_l"][:] = p["sh_flex_r"][:] = 0.3
    elif posture == "lying_back":    # supine
        p["trunk"][:] = -np.pi / 2
        p["hip_flex_l"][:] = p["hip_flex_r"][:] = np.pi / 2
        p["sh_flex_l"][:] = p["sh_flex_r"][:] = 0.2
    return p


def smoothstep(s):
    s = np.clip(s, 0.0, 1.0)
    return s * s * (3 - 2 * s)


def envelope(t, dur, ramp=0.3):
    """0 -> 1 -> 0 with smooth ramps of `ramp` s at both ends: [N]."""
    ramp = min(ramp, dur / 2)
    return smoothstep(t / ramp) * smoothstep((dur - t) / ramp)
