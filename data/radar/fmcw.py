"""FMCW radar maps computed analytically from point scatterers.

Radar: TI IWR1843-like (BRIEF section 2), all values in ``RadarConfig``:

=====================  =========================  ==========================
start frequency f0     77 GHz                     wavelength ~3.89 mm
chirp slope S          70 MHz/us
ADC rate fs            5.209 Msps, 256 samples    B = S*256/fs ~ 3.44 GHz
range resolution       c / 2B ~ 4.36 cm           R_max = 256 bins ~ 11.2 m
chirps per frame       128 in 20 ms               T_c = 156.25 us
velocity resolution    lambda / (2 * 128 * T_c)   ~ 0.097 m/s
max |velocity|         lambda / (4 T_c)           ~ 6.2 m/s (aliases beyond)
virtual array          8 elements (2 TX x 4 RX),  azimuth FFT zero-padded
                       spacing lambda / 2         to 128 bins
frame rate             20 frames/s                (clips of 5-11 s -> T 100-220)
=====================  =========================  ==========================

Bin conventions (what the point-target test checks):

* range bin      k = r / dR                       (0 .. 255, complex IF samples)
* Doppler bin    d = 64 + v_r / dv  (mod 128)     (fftshift; v_r > 0 = moving away)
* azimuth bin    a = 64 + 64 * u,  u = x / r      (fftshift; u = sin(theta) in the
  radar plane, theta > 0 towards +x, i.e. the radar's right)

Why analytic: the IF signal of scatterer p is a complex exponential whose
frequency along fast time, slow time and the array is set by its range,
radial velocity and direction cosine. The FFT of a windowed exponential is the
window's transform shifted to that frequency, so each map is a sum of shifted
window kernels -- no raw IF cube is needed. The maps are averages of
magnitudes over the 128 chirps and 8 antennas (range map), antennas and range
bins (Doppler map), range and Doppler bins (azimuth map); over such averages
the cross terms between scatterers with different phases cancel, so we add
powers: ``map = sqrt(sum_p a_p^2 |W(k - f_p)|^2 + noise)`` (incoherent sum).
Received amplitude follows the radar equation, ``a_p ~ sqrt(RCS_p) / R_p^2``
(power ~ RCS / R^4). Windows: Hann along range and Doppler (TI's default),
none along the 8-element array.
"""
import functools
from dataclasses import asdict, dataclass

import numpy as np

C = 299_792_458.0  # m/s


@dataclass(frozen=True)
class RadarConfig:
    f0: float = 77e9               # Hz
    slope: float = 70e12           # Hz/s (70 MHz/us)
    fs: float = 5.209e6            # ADC samples/s
    num_samples: int = 256         # -> range bins
    num_chirps: int = 128          # -> Doppler bins
    frame_time: float = 0.02       # s of chirping per frame
    num_virtual: int = 8           # azimuth virtual elements, lambda/2 apart
    angle_bins: int = 128          # zero-padded azimuth FFT
    frame_rate: float = 20.0       # frames/s
    height: float = 1.0            # m, radar above the floor at the origin, boresight +y

    @property
    def wavelength(self):
        return C / self.f0

    @property
    def bandwidth(self):
        return self.slope * self.num_samples / self.fs

    @property
    def range_res(self):
        return C / (2 * self.bandwidth)

    @property
    def max_range(self):
        return self.range_res * self.num_samples

    @property
    def chirp_time(self):
        return self.frame_time / self.num_chirps

    @property
    def velocity_res(self):
        return self.wavelength / (2 * self.num_chirps * self.chirp_time)

    @property
    def max_velocity(self):
        return self.wavelength / (4 * self.chirp_time)

    def range_bin(self, r):
        return np.asarray(r) / self.range_res

    def doppler_bin(self, v):
        return np.mod(self.num_chirps / 2 + np.asarray(v) / self.velocity_res, self.num_chirps)

    def azimuth_bin(self, u):
        """u: direction cosine along the array (sin of azimuth in the radar plane)."""
        return np.mod(self.angle_bins / 2 * (1 + np.asarray(u)), self.angle_bins)

    def as_dict(self):
        return asdict(self)


def _dirichlet(nu, n):
    """sum_{m<n} exp(-j 2 pi nu m), nu in cycles/sample (any shape)."""
    s = np.sin(np.pi * nu)
    small = np.abs(s) < 1e-9
    ratio = np.where(small, n, np.sin(np.pi * nu * n) / np.where(small, 1.0, s))
    return np.exp(-1j * np.pi * nu * (n - 1)) * ratio


def hann_kernel_power(delta, n):
    """|W(delta)|^2 / |W(0)|^2 of an n-point periodic Hann window; delta in FFT bins."""
    nu = np.asarray(delta, dtype=np.float64) / n
    w = 0.5 * _dirichlet(nu, n) - 0.25 * _dirichlet(nu - 1 / n, n) - 0.25 * _dirichlet(nu + 1 / n, n)
    return np.abs(w) ** 2 / (0.5 * n) ** 2


def array_kernel_power(delta, n_elem, n_fft):
    """|W|^2 / |W(0)|^2 of an unwindowed n_elem array in an n_fft-point FFT; delta in bins."""
    nu = np.asarray(delta, dtype=np.float64) / n_fft
    return np.abs(_dirichlet(nu, n_elem)) ** 2 / n_elem ** 2


@functools.lru_cache(maxsize=8)
def _kernel_matrix(kind, num_bins, oversample, wrap, n_elem):
    """M[j, k] = kernel(k - j / oversample): row j is the map of a unit tone at
    fine-grid position j / oversample. [num_bins * oversample, num_bins] float32."""
    j = np.arange(num_bins * oversample)[:, None] / oversample
    delta = np.arange(num_bins)[None, :] - j
    if wrap:
        delta = np.mod(delta + num_bins / 2, num_bins) - num_bins / 2
    if kind == "hann":
        m = hann_kernel_power(delta, num_bins)
    else:
        m = array_kernel_power(delta, n_elem, num_bins)
    return m.astype(np.float32)


def kernel_map(bins, power, num_bins, kind, wrap, n_elem=0, oversample=8):
    """Sum of shifted kernels: out[k, t] = sum_p power[t, p] * kernel(k - bins[t, p]).

    bins, power: [T, P]. Each tone's power is split linearly between the two
    nearest points of a grid oversample times finer than the FFT bins (a
    histogram [T, num_bins * oversample]); one matrix product with the
    precomputed kernel of every grid point gives the map. Cost O(T * P +
    T * num_bins^2 * oversample) instead of evaluating kernels per tone.
    Returns [num_bins, T].
    """
    t_len, n_fine = bins.shape[0], num_bins * oversample
    x = bins * oversample
    j0 = np.floor(x).astype(np.int64)
    frac = x - j0
    j = np.stack([j0, j0 + 1], -1)                                  # [T, P, 2]
    w = np.stack([1 - frac, frac], -1) * power[..., None]
    if wrap:
        j = np.mod(j, n_fine)
    else:
        w = np.where((j >= 0) & (j < n_fine), w, 0.0)
        j = np.clip(j, 0, n_fine - 1)
    flat = (np.arange(t_len)[:, None, None] * n_fine + j).ravel()
    hist = np.bincount(flat, weights=w.ravel(), minlength=t_len * n_fine).reshape(t_len, n_fine)
    out = hist.astype(np.float32) @ _kernel_matrix(kind, num_bins, oversample, wrap, n_elem)
    return np.maximum(out, 0.0).T


def radar_maps(pos, vel, rcs, cfg, noise_power=0.0, gain=1.0, rng=None, noise_looks=16):
    """Range-, Doppler- and azimuth-time maps of moving point scatterers.

    pos, vel: [T, P, 3] in metres and m/s, world frame (radar at (0, 0,
    cfg.height), array along x, boresight +y, z up). rcs: [T, P] in m^2.
    noise_power: receiver noise power per map cell relative to gain^2; the
    noise of an average of ``noise_looks`` independent looks is a
    Gamma(n, 1/n)-distributed multiple of it (fewer looks: grainier maps). Returns float32
    arrays range_time [256, T], doppler_time [128, T], azimuth_time [128, T].
    """
    rel = pos - np.array([0.0, 0.0, cfg.height])
    r = np.maximum(np.linalg.norm(rel, axis=-1), 0.05)       # [T, P]
    v_r = np.einsum("tpc,tpc->tp", rel, vel) / r             # radial velocity
    u = rel[..., 0] / r                                      # direction cosine along the array
    amp2 = gain ** 2 * rcs / r ** 4                           # received power
    # Scatterers in the back half-plane or beyond R_max are not seen.
    amp2 = np.where((rel[..., 1] > 0) & (r < cfg.max_range), amp2, 0.0)

    n_r, n_d, n_a = cfg.num_samples, cfg.num_chirps, cfg.angle_bins
    rng_p = kernel_map(cfg.range_bin(r), amp2, n_r, "hann", wrap=False)
    dop_p = kernel_map(cfg.doppler_bin(v_r), amp2, n_d, "hann", wrap=True)
    azi_p = kernel_map(cfg.azimuth_bin(u), amp2, n_a, "array", wrap=True, n_elem=cfg.num_virtual)
    # Averaging over the other two axes scales each map by a constant, so the
    # three maps share one power scale.
    out = []
    for p in (rng_p, dop_p, azi_p):
        if noise_power > 0:
            k = noise_looks
            p = p + noise_power * gain ** 2 * rng.gamma(k, 1.0 / k, size=p.shape)
        out.append(np.sqrt(p).astype(np.float32))
    return tuple(out)
