"""Mono sound events for the spatial scene generator, synthesised with real
variation (pitch, rhythm, timbre and length are drawn per instance), and the
caption phrases that name them.

Every synthesiser takes (rng, sr, dur) and returns a float32 [n] signal of
length round(dur * sr) with peak 1. They aim to be recognisably different
*kinds* of sound (harmonic, inharmonic, swept, noisy, impulsive), not
realistic recordings.
"""
import numpy as np
from scipy import signal


def _t(sr, dur):
    return np.arange(int(round(dur * sr))) / sr


def _env(n, attack, decay, sr):
    """Attack-decay envelope: linear rise over `attack` s, exp decay (time constant `decay` s)."""
    t = np.arange(n) / sr
    a = np.clip(t / max(attack, 1e-4), 0, 1)
    return a * np.exp(-np.maximum(t - attack, 0) / decay)


def _place(out, burst, start):
    end = min(len(out), start + len(burst))
    if start < end:
        out[start:end] += burst[: end - start]


def _bandpass(x, lo, hi, sr, order=2):
    sos = signal.butter(order, [lo, min(hi, 0.45 * sr)], btype="band", fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def dog_bark(rng, sr, dur):
    out = np.zeros(len(_t(sr, dur)))
    n_barks = rng.integers(2, 4)
    f0 = rng.uniform(350, 650)
    pos = rng.uniform(0, 0.1)
    for _ in range(n_barks):
        length = rng.uniform(0.12, 0.22)
        t = _t(sr, length)
        f = f0 * (1.2 - 0.4 * t / length)  # pitch falls through each bark
        phase = 2 * np.pi * np.cumsum(f) / sr
        harm = sum(np.sin(k * phase) / k for k in range(1, 8))
        noise = _bandpass(rng.standard_normal(len(t)), 500, 3000, sr)
        _place(out, (harm + 0.6 * noise) * _env(len(t), 0.01, length / 3, sr), int(pos * sr))
        pos += length + rng.uniform(0.12, 0.3)
    return out


def bell(rng, sr, dur):
    t = _t(sr, dur)
    f0 = rng.uniform(300, 900)
    ratios = np.array([1.0, 2.0, 2.4, 3.0, 4.2, 5.4]) * rng.uniform(0.98, 1.02, 6)  # inharmonic
    out = np.zeros(len(t))
    for k, r in enumerate(ratios):
        out += np.sin(2 * np.pi * f0 * r * t + rng.uniform(0, 6.28)) * np.exp(-t * (1.5 + k)) / (1 + k)
    if rng.random() < 0.5:  # a second strike
        s = int(rng.uniform(0.5, 0.9) * sr)
        out[s:] += 0.8 * out[: len(out) - s]
    return out * _env(len(t), 0.002, 10.0, sr)


def siren(rng, sr, dur):
    t = _t(sr, dur)
    lo, hi = rng.uniform(500, 800), rng.uniform(1100, 1600)
    rate = rng.uniform(0.8, 2.0)
    if rng.random() < 0.5:  # wail: smooth sweep
        f = lo + (hi - lo) * 0.5 * (1 - np.cos(2 * np.pi * rate * t))
    else:                   # hi-lo: two alternating tones
        f = np.where(np.sin(2 * np.pi * rate * t) > 0, hi, lo)
    phase = 2 * np.pi * np.cumsum(f) / sr
    return np.sin(phase) + 0.3 * np.sin(3 * phase)


def engine(rng, sr, dur):
    t = _t(sr, dur)
    f0 = rng.uniform(25, 60) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    saw = sum(np.sin(k * phase) / k for k in range(1, 20))
    rumble = _bandpass(rng.standard_normal(len(t)), 60, 600, sr)
    return saw + 0.5 * rumble


def rain(rng, sr, dur):
    n = len(_t(sr, dur))
    hiss = _bandpass(rng.standard_normal(n), rng.uniform(800, 1500), rng.uniform(5000, 7000), sr)
    drops = np.zeros(n)
    idx = rng.integers(0, n, size=int(rng.uniform(40, 120) * dur))
    drops[idx] = rng.uniform(0.5, 3.0, size=len(idx))
    drops = _bandpass(drops, 2000, 7000, sr)
    return hiss + drops


def footsteps(rng, sr, dur):
    out = np.zeros(len(_t(sr, dur)))
    step = rng.uniform(0.3, 0.55)
    pos = rng.uniform(0, 0.1)
    cutoff = rng.uniform(300, 900)
    while pos < dur - 0.05:
        n = int(0.06 * sr)
        b = signal.sosfilt(signal.butter(2, cutoff, fs=sr, output="sos"), rng.standard_normal(n))
        _place(out, b * _env(n, 0.002, 0.015, sr) * rng.uniform(0.7, 1.0), int(pos * sr))
        pos += step * rng.uniform(0.9, 1.1)
    return out


def bird(rng, sr, dur):
    out = np.zeros(len(_t(sr, dur)))
    pos = rng.uniform(0, 0.1)
    f_lo = rng.uniform(2000, 3500)
    while pos < dur - 0.15:
        length = rng.uniform(0.05, 0.12)
        t = _t(sr, length)
        f = f_lo + rng.uniform(800, 2000) * (t / length) ** rng.uniform(0.5, 2)
        chirp = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(len(t))
        _place(out, chirp, int(pos * sr))
        pos += length + rng.uniform(0.03, 0.2)
    return out


def _strikes(rng, sr, dur, first_max, count, gap, hit):
    """Impulsive events: `hit()` (a burst [m]) placed count = rng.integers(*count)
    times, the first within first_max s, then every rng.uniform(*gap) s."""
    out = np.zeros(len(_t(sr, dur)))
    pos = rng.uniform(0, first_max)
    for _ in range(rng.integers(*count)):
        _place(out, hit(), int(pos * sr))
        pos += rng.uniform(*gap)
    return out


def clap(rng, sr, dur):
    n = int(0.05 * sr)

    def hit():
        b = _bandpass(rng.standard_normal(n), 800, 5000, sr)
        return b * _env(n, 0.001, rng.uniform(0.006, 0.012), sr)
    return _strikes(rng, sr, dur, 0.1, (2, 6), (0.15, 0.4), hit)


def knock(rng, sr, dur):
    f = rng.uniform(150, 400)
    t = _t(sr, 0.12)
    b = (np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * 2.7 * f * t)) * np.exp(-t / 0.02)
    return _strikes(rng, sr, dur, 0.2, (2, 5), (0.12, 0.25), lambda: b)


def whistle(rng, sr, dur):
    t = _t(sr, dur)
    f0 = rng.uniform(1000, 2500)
    glide = rng.uniform(-400, 400) * t / dur
    vib = rng.uniform(10, 40) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    x = np.sin(2 * np.pi * np.cumsum(f0 + glide + vib) / sr)
    return x + 0.1 * _bandpass(rng.standard_normal(len(t)), 1000, 4000, sr)


def phone_ring(rng, sr, dur):
    t = _t(sr, dur)
    f1 = rng.uniform(700, 1100)
    f2 = f1 * rng.uniform(1.15, 1.35)
    tone = np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t)
    trill = (np.sin(2 * np.pi * rng.uniform(15, 25) * t) > 0).astype(float)
    gate = (np.mod(t, rng.uniform(0.6, 1.0)) < 0.4).astype(float)
    return tone * trill * gate


def drum(rng, sr, dur):
    f0 = rng.uniform(60, 120)
    t = _t(sr, 0.3)
    f = f0 * (1 + 1.5 * np.exp(-t / 0.03))  # pitch drop of a struck membrane
    tone = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.1)

    def hit():
        return tone + 0.3 * _bandpass(rng.standard_normal(len(t)), 200, 2000, sr) * np.exp(-t / 0.02)
    return _strikes(rng, sr, dur, 0.1, (2, 5), (0.2, 0.45), hit)


# name -> (synthesiser, caption phrases). Phrases are full clauses so that a
# caption reads "<phrase> from the <direction>".
SOUND_CLASSES = {
    "dog": (dog_bark, ["a dog barks", "a dog is barking", "a barking dog is heard"]),
    "bell": (bell, ["a bell rings", "a bell is ringing", "a bell chimes"]),
    "siren": (siren, ["a siren wails", "a siren is sounding", "an emergency siren blares"]),
    "engine": (engine, ["an engine rumbles", "an engine is running", "a motor hums"]),
    "rain": (rain, ["rain falls", "rain is pattering", "rain drips steadily"]),
    "footsteps": (footsteps, ["someone walks", "footsteps are heard", "a person is walking"]),
    "bird": (bird, ["a bird chirps", "a bird is singing", "birds tweet"]),
    "clap": (clap, ["someone claps", "hands are clapping", "a person claps their hands"]),
    "knock": (knock, ["someone knocks", "a knock on a door is heard", "knocking on wood"]),
    "whistle": (whistle, ["someone whistles", "a whistle is blown", "a whistling tone sounds"]),
    "phone": (phone_ring, ["a phone rings", "a telephone is ringing", "a phone trills"]),
    "drum": (drum, ["a drum is hit", "drums are beaten", "a drum booms"]),
}
CLASS_NAMES = list(SOUND_CLASSES)


def synth_event(name, rng, sr, dur):
    """One instance of class `name`: float32 [round(dur*sr)], peak-normalised."""
    if name not in SOUND_CLASSES:
        raise ValueError(f"unknown sound class {name!r}; expected one of {CLASS_NAMES}")
    x = np.asarray(SOUND_CLASSES[name][0](rng, sr, dur), dtype=np.float64)
    n = int(round(dur * sr))
    x = x[:n]
    fade = min(int(0.01 * sr), n // 2)  # no clicks at the cut
    x[:fade] *= np.linspace(0, 1, fade)
    x[n - fade:] *= np.linspace(1, 0, fade)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)
