"""The action vocabulary and how a clip chains 1-3 actions in time.

Each action is a pair ``(sample_params, build)``:

* ``sample_params(rng, state, body) -> params | None`` draws the action's
  parameters (direction relative to the radar, speed, repetitions, which
  arm/leg, ...) and its duration, or None when the action cannot follow the
  current state (e.g. "stand up" while standing, a walk that would leave the
  radar's field of view).
* ``build(t, body, state, params) -> (pose, end_state)``: pose curves
  (``motion.POSE_KEYS``) over local times t [n], starting and ending at
  the neutral pose of the posture.

``state`` = {"posture": standing | sitting | lying_front | lying_back,
"x", "y" (m, floor position), "heading" (rad, 0 faces away from the radar)}.
Directions are as seen from the radar: "towards"/"away" along the line of
sight, "left"/"right" across it (left = -x).
"""
import numpy as np

from data.radar.motion import envelope, neutral, smoothstep

STANDING = ("standing",)
LYING = ("lying_front", "lying_back")
MIN_RANGE, MAX_RANGE, MAX_AZIMUTH = 1.3, 8.5, np.deg2rad(50)


def _bump(s):
    """One smooth 0 -> 1 -> 0 pulse per unit of s (s may span several reps)."""
    return np.sin(np.pi * np.mod(s, 1.0)) ** 2


def _heading_of(dx, dy):
    return np.arctan2(-dx, dy)


def _turn_to(h0, h1, t, dur=0.4):
    d = (h1 - h0 + np.pi) % (2 * np.pi) - np.pi
    return h0 + d * smoothstep(t / dur)


def _root(state, n):
    return {"x": np.full(n, state["x"]), "y": np.full(n, state["y"]), "heading": np.full(n, state["heading"])}


def _in_view(x, y):
    r = np.hypot(x, y)
    return y > 0 and MIN_RANGE <= r <= MAX_RANGE and abs(np.arctan2(x, y)) <= MAX_AZIMUTH


# ------------------------------------------------------------------ locomotion
def _direction_vector(state, direction):
    los = np.array([state["x"], state["y"]]) / np.hypot(state["x"], state["y"])
    return {"towards": -los, "away": los, "left": np.array([-1.0, 0.0]), "right": np.array([1.0, 0.0])}[direction]


def _sample_locomotion(speed_range, dur_range):
    def sample(rng, state, body):
        if state["posture"] != "standing":
            return None
        for direction in rng.permutation(["towards", "away", "left", "right"]):
            speed = rng.uniform(*speed_range)
            dur = rng.uniform(*dur_range)
            dx, dy = _direction_vector(state, direction) * speed * (dur - 0.3)
            if _in_view(state["x"] + dx, state["y"] + dy):
                return {"direction": str(direction), "speed": round(float(speed), 2), "duration": dur}
        return None
    return sample


def _build_locomotion(running):
    def build(t, body, state, p):
        n, dur, v = len(t), p["duration"], p["speed"]
        env = envelope(t, dur, ramp=0.3)
        step_len = body["height"] * (0.45 if running else 0.28 + 0.12 * min(v, 1.8))
        stride_hz = v / (2 * step_len)
        dt = np.diff(t, prepend=t[0])
        phase = 2 * np.pi * stride_hz * np.cumsum(env * dt)          # [n]
        pose = neutral("standing", n)
        a_hip, a_knee, a_arm = (0.55, 1.5, 0.6) if running else (0.22 + 0.1 * v, 0.55 + 0.2 * v, 0.15 + 0.15 * v)
        for side, sgn in (("l", 1.0), ("r", -1.0)):
            ph = phase + (0 if sgn > 0 else np.pi)
            pose[f"hip_flex_{side}"] = env * a_hip * np.sin(ph)
            pose[f"knee_{side}"] = env * a_knee * np.clip(np.sin(ph + 0.6), 0, None) ** 1.5 + 0.05
            pose[f"sh_flex_{side}"] = -env * a_arm * np.sin(ph)
            pose[f"elbow_{side}"] = 0.15 + env * (1.3 if running else 0.1 + 0.15 * v)
        pose["trunk"] = env * (0.18 if running else 0.04)
        if running:  # two flight phases per stride
            pose["air"] = env * 0.05 * np.clip(np.sin(2 * phase), 0, None)
        d = _direction_vector(state, p["direction"])
        travelled = v * np.cumsum(env * dt)                           # [n] metres
        h1 = _heading_of(*d)
        root = {"x": state["x"] + d[0] * travelled, "y": state["y"] + d[1] * travelled,
                "heading": _turn_to(state["heading"], h1, t)}
        end = dict(state, x=float(root["x"][-1]), y=float(root["y"][-1]), heading=float(h1))
        return {**pose, **root}, end
    return build


# ------------------------------------------------------------- in-place actions
def _sample_reps(reps, period, extra=None, postures=STANDING):
    """Repeated in-place action: `reps` (lo, hi) repetitions of `period` s / tempo."""
    def sample(rng, state, body):
        if state["posture"] not in postures:
            return None
        p = {"reps": int(rng.integers(reps[0], reps[1] + 1))}
        for key, choices in (extra or {}).items():
            p[key] = str(rng.choice(choices))
        p["period"] = period / body["tempo"] * rng.uniform(0.9, 1.1)
        p["duration"] = p["reps"] * p["period"] + 0.6
        return p
    return sample


def _reps_phase(t, p):
    """Repetition phase s in [0, reps] over the action, after a 0.3 s lead-in."""
    return np.clip((t - 0.3) / p["period"], 0, p["reps"])


def _arms(p):
    return {"left": ("l",), "right": ("r",), "both": ("l", "r")}[p.get("arm", "both")]


def build_jump(t, body, state, p):
    pose, s = neutral("standing", len(t)), _reps_phase(t, p)
    u = np.mod(s, 1.0)
    active = (s > 0) & (s < p["reps"])
    g = lambda mu, sd: active * np.exp(-((u - mu) / sd) ** 2)       # smooth pulses: no velocity jumps
    crouch = g(0.2, 0.09) + g(0.85, 0.08)
    fly = active * np.sin(np.pi * np.clip((u - 0.32) / 0.4, 0, 1)) ** 2
    height = 0.15 + 0.25 * p.get("height", 0.5)
    pose["air"] = height * fly
    for side in ("l", "r"):
        pose[f"hip_flex_{side}"] = 0.8 * crouch + 0.2 * fly
        pose[f"knee_{side}"] = 1.4 * crouch + 0.4 * fly
        pose[f"sh_flex_{side}"] = -0.5 * crouch + 1.6 * g(0.5, 0.15)
    pose["trunk"] = 0.45 * crouch
    return {**pose, **_root(state, len(t))}, state


def build_wave(t, body, state, p):
    pose, env = neutral("standing", len(t)), envelope(t, p["duration"], ramp=0.4)
    hz = 1.0 / p["period"]
    for side in _arms(p):
        pose[f"sh_abd_{side}"] = 0.08 + env * 2.2
        pose[f"elbow_{side}"] = 0.15 + env * (0.6 + 0.4 * np.sin(2 * np.pi * hz * t))
        pose[f"sh_yaw_{side}"] = env * 0.3
    return {**pose, **_root(state, len(t))}, state


def build_squat(t, body, state, p):
    pose, b = neutral("standing", len(t)), _bump(_reps_phase(t, p))
    for side in ("l", "r"):
        pose[f"hip_flex_{side}"] = 1.2 * b
        pose[f"knee_{side}"] = 2.0 * b
        pose[f"sh_flex_{side}"] = 1.4 * b
    pose["trunk"] = 0.5 * b
    return {**pose, **_root(state, len(t))}, state


def build_kick(t, body, state, p):
    pose, s = neutral("standing", len(t)), _reps_phase(t, p)
    u = np.mod(s, 1.0)
    b = _bump(s)
    leg = "l" if p["leg"] == "left" else "r"
    other = "r" if leg == "l" else "l"
    snap = np.exp(-((u - 0.5) / 0.12) ** 2) * (s > 0) * (s < p["reps"])
    pose[f"hip_flex_{leg}"] = 1.3 * b
    pose[f"knee_{leg}"] = 1.5 * b * (1 - 0.9 * snap)      # the knee extends at the top: the kick
    pose[f"sh_flex_{other}"] = 0.5 * b
    pose["trunk"] = -0.25 * b
    return {**pose, **_root(state, len(t))}, state


def build_clap(t, body, state, p):
    pose, env = neutral("standing", len(t)), envelope(t, p["duration"], ramp=0.4)
    hz = 1.0 / p["period"]
    for side in ("l", "r"):
        pose[f"sh_flex_{side}"] = env * 1.3
        pose[f"elbow_{side}"] = 0.15 + env * 0.5
        pose[f"sh_yaw_{side}"] = env * (0.25 + 0.25 * np.cos(2 * np.pi * hz * (t - 0.3)))
    return {**pose, **_root(state, len(t))}, state


def build_bend(t, body, state, p):
    pose, b = neutral("standing", len(t)), _bump(_reps_phase(t, p))
    pose["trunk"] = 1.3 * b
    for side in ("l", "r"):
        pose[f"knee_{side}"] = 0.05 + 0.2 * b
        pose[f"hip_flex_{side}"] = 0.1 * b
        pose[f"sh_flex_{side}"] = 1.2 * b                  # arms hang towards the floor
    return {**pose, **_root(state, len(t))}, state


def build_punch(t, body, state, p):
    pose, env = neutral("standing", len(t)), envelope(t, p["duration"], ramp=0.3)
    s = _reps_phase(t, p)
    rep = np.floor(s).astype(int)
    u = np.mod(s, 1.0)
    strike = np.exp(-((u - 0.45) / 0.13) ** 2) * (s > 0) * (s < p["reps"])
    arms = _arms(p)
    for side in ("l", "r"):                                     # guard pose
        pose[f"sh_flex_{side}"] = env * 0.8
        pose[f"elbow_{side}"] = 0.15 + env * 1.7
    for i, side in enumerate(arms):
        mine = strike * ((rep % len(arms)) == i)               # alternate when both arms punch
        pose[f"sh_flex_{side}"] = pose[f"sh_flex_{side}"] + 0.75 * mine
        pose[f"elbow_{side}"] = pose[f"elbow_{side}"] - 1.7 * mine
    return {**pose, **_root(state, len(t))}, state


def build_jumping_jacks(t, body, state, p):
    pose, s = neutral("standing", len(t)), _reps_phase(t, p)
    b = _bump(s)
    active = (s > 0) & (s < p["reps"])
    for side in ("l", "r"):
        pose[f"sh_abd_{side}"] = 0.08 + 2.6 * b
        pose[f"hip_abd_{side}"] = 0.3 * b
    pose["air"] = 0.07 * active * np.sin(2 * np.pi * np.mod(s, 0.5)) ** 2
    return {**pose, **_root(state, len(t))}, state


# ------------------------------------------------------- posture transitions
def _sample_transition(from_postures, dur_range, extra=None):
    def sample(rng, state, body):
        if state["posture"] not in from_postures:
            return None
        p = {key: str(rng.choice(c)) for key, c in (extra or {}).items()}
        p["duration"] = rng.uniform(*dur_range) / body["tempo"] * (1.4 if state["posture"] in LYING else 1.0)
        return p
    return sample


def _lerp_pose(a, b, s):
    return {k: a[k] + (b[k] - a[k]) * s for k in a}


def build_sit_down(t, body, state, p):
    s = smoothstep(t / p["duration"])
    pose = _lerp_pose(neutral("standing", len(t)), neutral("sitting", len(t)), s)
    pose["trunk"] = pose["trunk"] + 0.5 * np.sin(np.pi * s)     # lean forward while lowering
    return {**pose, **_root(state, len(t))}, dict(state, posture="sitting")


def build_stand_up(t, body, state, p):
    s = smoothstep(t / p["duration"])
    pose = _lerp_pose(neutral(state["posture"], len(t)), neutral("standing", len(t)), s)
    pose["trunk"] = pose["trunk"] + 0.5 * np.sin(np.pi * s)
    return {**pose, **_root(state, len(t))}, dict(state, posture="standing")


def build_fall(t, body, state, p):
    s = np.clip(t / p["duration"], 0, 1) ** 2                 # accelerates like a topple
    end = "lying_front" if p["direction"] == "forward" else "lying_back"
    pose = _lerp_pose(neutral("standing", len(t)), neutral(end, len(t)), s)
    for side in ("l", "r"):
        pose[f"knee_{side}"] = pose[f"knee_{side}"] + 0.8 * np.sin(np.pi * s)
    root = _root(state, len(t))
    face = np.array([-np.sin(state["heading"]), np.cos(state["heading"])])
    shift = (0.5 if p["direction"] == "forward" else -0.5) * body["height"] * s
    root["x"], root["y"] = state["x"] + face[0] * shift, state["y"] + face[1] * shift
    return {**pose, **root}, dict(state, posture=end, x=float(root["x"][-1]), y=float(root["y"][-1]))


def build_turn(t, body, state, p):
    pose = neutral("standing", len(t))
    env = envelope(t, p["duration"], ramp=0.3)
    sign = 1.0 if p["direction"] == "left" else -1.0
    h = state["heading"] + sign * np.pi * smoothstep(t / p["duration"])
    for side, ph in (("l", 0.0), ("r", np.pi)):                   # small stepping on the spot
        pose[f"hip_flex_{side}"] = env * 0.15 * np.clip(np.sin(2 * np.pi * 1.6 * t + ph), 0, None)
        pose[f"knee_{side}"] = env * 0.3 * np.clip(np.sin(2 * np.pi * 1.6 * t + ph), 0, None)
    root = _root(state, len(t))
    root["heading"] = h
    return {**pose, **root}, dict(state, heading=float(h[-1]))


def build_idle(t, body, state, p):
    pose = neutral(state["posture"], len(t))
    pose["trunk"] = pose["trunk"] + 0.01 * np.sin(2 * np.pi * 0.3 * t)     # breathing sway
    return {**pose, **_root(state, len(t))}, state


ACTIONS = {
    "walk": (_sample_locomotion((0.6, 1.7), (2.0, 3.5)), _build_locomotion(False)),
    "run": (_sample_locomotion((2.0, 3.2), (1.4, 2.2)), _build_locomotion(True)),
    "jump": (_sample_reps((1, 3), 0.9), build_jump),
    "wave": (_sample_reps((2, 5), 0.55, {"arm": ["left", "right", "both"]}), build_wave),
    "squat": (_sample_reps((1, 3), 1.6), build_squat),
    "sit down": (_sample_transition(STANDING, (1.5, 2.3)), build_sit_down),
    "stand up": (_sample_transition(("sitting",) + LYING, (1.5, 2.3)), build_stand_up),
    "turn around": (_sample_transition(STANDING, (1.4, 2.2), {"direction": ["left", "right"]}), build_turn),
    "kick": (_sample_reps((1, 3), 1.0, {"leg": ["left", "right"]}), build_kick),
    "clap": (_sample_reps((3, 7), 0.45), build_clap),
    "fall": (_sample_transition(STANDING, (0.9, 1.4), {"direction": ["forward", "backward"]}), build_fall),
    "bend over": (_sample_reps((1, 2), 2.2), build_bend),
    "punch": (_sample_reps((2, 6), 0.6, {"arm": ["left", "right", "both"]}), build_punch),
    "jumping jacks": (_sample_reps((2, 4), 1.0), build_jumping_jacks),
}
ACTION_NAMES = tuple(ACTIONS)


def sample_clip(rng, body, num_actions=None, min_duration=5.0, max_duration=11.0, fine_rate=100.0):
    """Chain 1-3 distinct actions; return (pose curves [N] at fine_rate, action list).

    The action list holds {"name", "start", "end", "params"} with times in s.
    Idle stretches before, between and after the actions pad the clip to
    min_duration; the clip never exceeds max_duration (T < 500 frames).
    """
    if num_actions is None:
        num_actions = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    r0, az0 = rng.uniform(2.0, 5.5), rng.uniform(-0.6, 0.6)
    posture = str(rng.choice(["standing", "sitting", "lying_front", "lying_back"], p=[0.88, 0.06, 0.03, 0.03]))
    state = {"posture": posture, "x": r0 * np.sin(az0), "y": r0 * np.cos(az0),
             "heading": float(np.pi + rng.uniform(-0.5, 0.5) if rng.random() < 0.7 else rng.uniform(-np.pi, np.pi))}
    pieces, actions, used, t0 = [], [], set(), 0.0

    def add(name, p):
        nonlocal state, t0
        n = max(int(round(p["duration"] * fine_rate)), 1)
        build = build_idle if name == "idle" else ACTIONS[name][1]
        pose, state = build(np.arange(n) / fine_rate, body, state, p)
        pieces.append(pose)
        if name != "idle":
            params = {k: v for k, v in p.items() if k not in ("duration", "period")}
            actions.append({"name": name, "start": round(t0, 2), "end": round(t0 + n / fine_rate, 2),
                            "params": params})
        t0 += n / fine_rate

    add("idle", {"duration": rng.uniform(0.3, 1.0)})
    for _ in range(num_actions):
        for name in rng.permutation(ACTION_NAMES):
            if name in used:
                continue
            p = ACTIONS[name][0](rng, state, body)
            if p is not None and t0 + p["duration"] + 0.5 <= max_duration:
                break
        else:
            break
        used.add(str(name))
        add(str(name), p)
        add("idle", {"duration": rng.uniform(0.05, 0.4)})
    if t0 < min_duration:
        add("idle", {"duration": min_duration - t0 + rng.uniform(0, 0.5)})
    pose = {k: np.concatenate([pc[k] for pc in pieces]) for k in pieces[0]}
    return pose, actions
