"""First-order ambisonics (FOA) encoding and reverberant rendering.

Convention (BRIEF sec. 3): ACN channel order W, Y, Z, X with SN3D
normalisation. A plane wave s from azimuth phi (counter-clockwise from the
front, so +90 deg is the left) and elevation theta encodes as
    W = s, Y = s sin(phi) cos(theta), Z = s sin(theta), X = s cos(phi) cos(theta).

Reverberation: pyroomacoustics' image-source model of a shoebox room gives
every reflection's position and damping; each image is then FOA-encoded from
its own direction, so early reflections arrive from the walls, as they would
at a real tetrahedral mic converted to B-format.
"""
import numpy as np
import pyroomacoustics as pra
from scipy import signal

# 8 sectors of 45 deg, centred on these azimuths; words used in captions.
SECTOR_WORDS = ["front", "front left", "left", "back left",
                "back", "back right", "right", "front right"]
SECTOR_CENTRES_DEG = [0, 45, 90, 135, 180, 225, 270, 315]
SPEED_OF_SOUND = 343.0


def foa_gains(azi_deg, ele_deg):
    """SN3D gains [..., 4] in ACN order (W, Y, Z, X) for directions in degrees."""
    a, e = np.deg2rad(azi_deg), np.deg2rad(ele_deg)
    return np.stack([np.ones_like(a), np.sin(a) * np.cos(e), np.sin(e),
                     np.cos(a) * np.cos(e)], axis=-1)


def foa_encode(s, azi_deg, ele_deg):
    """Anechoic plane-wave encoding: mono [n] -> FOA [4, n]."""
    return foa_gains(np.float64(azi_deg), np.float64(ele_deg))[:, None] * s[None, :]


def sector_of(azi_deg):
    """Index 0..7 of the 45-deg sector containing the azimuth."""
    return int(np.floor(((azi_deg + 22.5) % 360) / 45.0)) % 8


def draw_direction(rng, sector, max_ele=45.0):
    """Azimuth uniform inside the sector (+-22.5 deg around its centre), elevation in +-max_ele."""
    azi = (SECTOR_CENTRES_DEG[sector] + rng.uniform(-22.5, 22.5)) % 360
    ele = rng.uniform(-max_ele, max_ele)
    return float(azi), float(ele)


def direction_vector(azi_deg, ele_deg):
    """Unit vector (x front, y left, z up) [..., 3], the DOA target of BRIEF sec. 3."""
    a, e = np.deg2rad(azi_deg), np.deg2rad(ele_deg)
    return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1)


class Room:
    """A random shoebox room with the listener (FOA mic) placed inside."""

    def __init__(self, rng, sr, max_order=8, rir_len_s=0.4):
        self.sr = sr
        self.dims = np.array([rng.uniform(5, 9), rng.uniform(4, 7), rng.uniform(2.8, 3.6)])
        self.absorption = rng.uniform(0.25, 0.6)
        self.mic = np.array([rng.uniform(2.0, self.dims[0] - 2.0), rng.uniform(2.0, self.dims[1] - 2.0),
                             rng.uniform(1.3, 1.7)])
        self.max_order = max_order
        self.rir_len = int(rir_len_s * sr)

    def source_position(self, azi_deg, ele_deg, distance):
        """Source at (azi, ele) from the mic, pulled closer until it fits in the room."""
        u = direction_vector(azi_deg, ele_deg)
        for d in np.linspace(distance, 0.5, 8):
            p = self.mic + d * u
            if np.all(p > 0.2) and np.all(p < self.dims - 0.2):
                return p
        raise ValueError(f"direction ({azi_deg}, {ele_deg}) does not fit room {self.dims}")

    def foa_rir(self, azi_deg, ele_deg, distance):
        """FOA impulse response [4, rir_len] from a source at (azi, ele, distance)."""
        room = pra.ShoeBox(self.dims, fs=self.sr, materials=pra.Material(self.absorption),
                           max_order=self.max_order)
        room.add_source(self.source_position(azi_deg, ele_deg, distance))
        room.add_microphone(self.mic[:, None])
        room.image_source_model()
        src = room.sources[0]
        rel = src.images - self.mic[:, None]                   # [3, n_img]
        dist = np.linalg.norm(rel, axis=0)
        azi = np.rad2deg(np.arctan2(rel[1], rel[0]))
        ele = np.rad2deg(np.arcsin(np.clip(rel[2] / dist, -1, 1)))
        amp = src.damping.prod(axis=0) / np.maximum(dist, 0.1)  # 1/r spreading
        delay = np.round(dist / SPEED_OF_SOUND * self.sr).astype(int)
        delay -= delay.min()                                    # direct path at t = 0
        keep = delay < self.rir_len
        rir = np.zeros((4, self.rir_len))
        gains = foa_gains(azi[keep], ele[keep]) * (amp[keep] / amp[keep].max())[:, None]  # [n, 4]
        for ch in range(4):
            np.add.at(rir[ch], delay[keep], gains[:, ch])
        return rir

    def render(self, s, azi_deg, ele_deg, distance):
        """Reverberant FOA [4, len(s) + rir_len - 1] of mono s."""
        rir = self.foa_rir(azi_deg, ele_deg, distance)
        return signal.fftconvolve(s[None, :], rir, axes=1)


def diffuse_noise(rng, n, sr):
    """Pink-ish diffuse background noise [4, n]: independent channels with the
    SN3D diffuse-field energy ratio (directional channels at 1/3 of W)."""
    white = rng.standard_normal((4, n))
    b, a = signal.butter(1, 1000, fs=sr)  # tilt towards low frequencies
    noise = signal.lfilter(b, a, white, axis=1)
    noise[1:] *= np.sqrt(1 / 3)
    return noise / (noise[0].std() + 1e-9)
