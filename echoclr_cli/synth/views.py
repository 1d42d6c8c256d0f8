"""Non-PLAX views of the synthetic heart (``echoclr synth --views``): PSAX, A4C and A2C.

Each renderer returns the same canonical cycle as :func:`echoclr_cli.synth.anatomy.render_heart`
(float32 ``(n_phases, Hc, Wc)``, rows = depth v from the transducer, cols = lateral u, 1 mm per
pixel), drawn from the same per-study :class:`Anatomy`, so every view of a study shows the same
heart: the wall thickness (LVH), LV size, fractional shortening, atrial size and heart rate.
The video pipeline (sector, probe rotation and shift, gain, speckle, screen furniture) is shared.

* PSAX (papillary-muscle level): the LV as a ring whose thickness is ``wall_mm`` (thickens and
  narrows in systole), two papillary muscles, the RV as an anterior crescent, a bright
  posterior pericardium.
* A4C (apex at the top): LV on the right, RV on the left, the septum between them (thickness
  ``wall_mm``), the atria below the valve plane, mitral and tricuspid leaflets opening in
  diastole, the base moving towards the apex in systole.
* A2C: the LV alone (inferior and anterior walls, thickness ``wall_mm``) with the LA below and
  the coronary sinus in the atrioventricular groove.

The aortic valve is not in these views (as at these levels in real echo): AS is visible in PLAX
only; LVH in every view.
"""

from __future__ import annotations

import numpy as np

from echoclr_cli.synth.anatomy import (
    CANON_RES,
    CANON_U,
    CANON_V,
    N_PHASES,
    Anatomy,
    _band,
    _contraction,
    _leaflet,
    _ramp,
)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    v = np.arange(CANON_V[0], CANON_V[1], CANON_RES, dtype=np.float32)[None, :, None]  # (1,Hc,1)
    u = np.arange(CANON_U[0], CANON_U[1], CANON_RES, dtype=np.float32)[None, None, :]  # (1,1,Wc)
    return u, v


def _ell(u, v, uc, vc, a, b) -> np.ndarray:
    """Signed radial distance (mm, < 0 inside) from the ellipse centred (uc, vc) with semi-axes
    a (lateral), b (depth), measured along the ray from the centre. Shapes broadcast."""
    du, dv = u - uc, v - vc
    r = np.sqrt(du * du + dv * dv)
    q = np.sqrt((du / a) ** 2 + (dv / b) ** 2)
    return r * (1.0 - 1.0 / np.maximum(q, 1e-3))


def _soft_in(d: np.ndarray, edge: float = 1.2) -> np.ndarray:
    """1 inside (d < 0), 0 outside, soft edge."""
    return _ramp(-d / edge)


def _cycle(a: Anatomy, n_phases: int) -> np.ndarray:
    p = np.arange(n_phases, dtype=np.float64) / n_phases
    c, _, m = _contraction(p, a.heart_rate)
    return c.astype(np.float32)[:, None, None], m


def render_psax(a: Anatomy, n_phases: int = N_PHASES) -> np.ndarray:
    """Parasternal short axis at the papillary muscles (see the module doc)."""
    u, v = _grid()
    cc, _ = _cycle(a, n_phases)
    r_in = 0.5 * a.lv_size * (1 - a.fs * cc)  # (P,1,1)
    t = a.wall_mm * (1 + 0.35 * cc)
    r_out = r_in + t
    uc = 0.0
    vc = a.rv_top + 4.0 + 0.7 * a.rv_cavity + a.wall_mm + 0.5 * a.lv_size
    r = np.sqrt((u - uc) ** 2 + (v - vc) ** 2)  # (1,Hc,Wc)
    heart = 0.52 * _band(r, r_in, r_out)  # (P,Hc,Wc) the LV ring
    behind = np.clip((v - vc) / 12.0 + 0.5, 0.0, 1.0)  # 0 anterior .. 1 posterior
    np.maximum(heart, (0.3 + 0.62 * behind) * _band(r, r_out, r_out + 2.5), out=heart)
    r0 = 0.5 * a.lv_size + a.wall_mm
    deep = np.clip((r - r_out - 2.5) / 2.0, 0.0, 1.0) * np.clip((v - vc) / 8.0, 0.0, 1.0)
    deep = deep * _ramp((1.2 * r0 - np.abs(u - uc)) / 8.0)  # tissue behind the heart only
    np.maximum(heart, deep * (0.30 - 0.0008 * v), out=heart)
    # RV: a crescent in front (above, to the left) of the LV, its free wall 4 mm
    rv_r = r0 + 0.6 * a.rv_cavity
    rv = np.sqrt((u - (uc - 0.3 * r0)) ** 2 + (v - (vc - 0.45 * r0)) ** 2)  # (1,Hc,Wc)
    outside_lv = _ramp((r - r_out - 1.0) / 1.2) * (v < vc + 0.2 * r0)
    np.maximum(heart, 0.45 * _band(rv, rv_r, rv_r + 4.0) * outside_lv, out=heart)
    # papillary muscles at about 4 and 8 o'clock, moving with the endocardium
    for side in (-1.0, 1.0):
        pu = uc + side * 0.68 * r_in * np.sin(np.radians(50.0))
        pv = vc + 0.68 * r_in * np.cos(np.radians(50.0))
        dist = np.sqrt((u - pu) ** 2 + (v - pv) ** 2)
        np.maximum(heart, 0.45 * _ramp((0.09 * a.lv_size - dist) / 1.0), out=heart)
    np.maximum(heart, 0.02, out=heart)
    return heart.astype(np.float32, copy=False)


def _apical(a: Anatomy, n_phases: int, four: bool) -> np.ndarray:
    """A4C (``four``) or A2C (see the module doc)."""
    u, v = _grid()
    cc, m = _cycle(a, n_phases)
    v_ap = 12.0 + 0.3 * a.rv_top  # epicardial apex depth (static: the base moves, not the apex)
    length = 1.55 * a.lv_size + 8.0  # LV cavity length at end-diastole
    vb = v_ap + a.wall_mm + length * (1 - 0.13 * cc)  # (P,1,1) valve plane (mitral annulus)
    b_lv = vb - v_ap - a.wall_mm * (1 + 0.3 * cc)
    a_lv = 0.5 * a.lv_size * (1 - a.fs * cc)
    t_s = a.wall_mm * (1 + 0.30 * cc)  # septum / inferior wall
    t_l = a.wall_mm * a.pw_ratio * (1 + 0.45 * cc)  # lateral / anterior wall
    above = _ramp((vb - v) / 1.2)  # (P,Hc,1) 1 above the valve plane
    if four:
        us = -4.0  # septum centre line
        u_lv = us + 0.5 * t_s + a_lv
        a_rv = 0.5 * (a.rv_cavity + 10.0) * (1 - 0.5 * a.fs * cc)
        u_rv = us - 0.5 * t_s - a_rv
        d_rv = _ell(u, v, u_rv, vb, a_rv, 0.82 * b_lv)
        d_lv = _ell(u, v, u_lv, vb, a_lv, b_lv)
        sept = _ramp((0.5 * t_s - np.abs(u - us)) / 1.2) * _ramp((v - v_ap - 6.0) / 2.0)
        myo = np.maximum(_ramp((t_l - d_lv) / 1.2), _ramp((4.0 - d_rv) / 1.2))
        np.maximum(myo, sept, out=myo)
        cav = np.maximum(_soft_in(d_lv), _soft_in(d_rv))
        lateral = _ramp((u - u_lv) / 4.0)  # pericardium on the LV free-wall side
    else:
        u_lv = 2.0
        d_lv = _ell(u, v, u_lv, vb, a_lv, b_lv)
        # inferior wall (left of the screen) t_s, anterior wall (right) t_l
        tw = np.where(u < u_lv, t_s, t_l)
        myo = _ramp((tw - d_lv) / 1.2)
        cav = _soft_in(d_lv)
        lateral = np.float32(1.0)
    heart = 0.5 * myo * (1 - cav) * above
    peri = _band(d_lv, t_l, t_l + 2.5) * above * lateral
    np.maximum(heart, 0.85 * peri, out=heart)

    # atria below the valve plane: walls 2.5 mm, blood inside
    la_r = 0.5 * a.la_mm * (1 + 0.12 * cc) * 0.9
    if four:
        atria = [(us + 2.0 + la_r, la_r), (us - 2.0 - 0.85 * la_r, 0.85 * la_r)]
    else:
        atria = [(u_lv + 1.0, la_r)]
    lowest = vb
    for ua, ra in atria:
        va = vb + 2.0 + 1.1 * ra
        d_a = _ell(u, v, ua, va, ra, 1.1 * ra)
        below = _ramp((v - vb) / 1.2)
        np.maximum(heart, 0.38 * _band(d_a, 0.0, 2.5) * below, out=heart)
        lowest = np.maximum(lowest, va + 1.1 * ra + 2.5)
    deep = np.clip((v - lowest - 6.0) / 3.0, 0.0, 1.0) * (0.28 - 0.0008 * v)
    np.maximum(heart, deep, out=heart)
    if not four:  # coronary sinus in the AV groove, left of the LA
        cs = np.sqrt((u - (u_lv - a_lv - 7.0)) ** 2 + (v - (vb + 5.0)) ** 2)
        np.maximum(heart, 0.5 * _band(cs, 3.0, 5.0), out=heart)
    np.maximum(heart, 0.02, out=heart)
    heart = heart.astype(np.float32, copy=False)

    # AV valves per phase: closed leaflets point across the annulus, open ones towards the apex
    for k in range(n_phases):
        vbk, ak = float(vb[k, 0, 0]), float(a_lv[k, 0, 0])
        ulk = float(np.broadcast_to(u_lv, vb.shape)[k, 0, 0])
        left = (ulk - ak + (1.0 if four else 0.0), vbk)
        right = (ulk + ak - 1.0, vbk)
        mk = float(m[k])
        _leaflet(heart[k], left, -15.0 - 70.0 * mk, 0.62 * ak * 2 * 0.55, 1.5, 2.0, 0.5)
        _leaflet(heart[k], right, 195.0 + 70.0 * mk, 0.45 * ak * 2 * 0.55, 1.5, 1.8, 0.45)
        if four:
            ar = float(a_rv[k, 0, 0])
            u_r = float(u_rv[k, 0, 0])
            _leaflet(heart[k], (u_r + ar - 1.0, vbk), 195.0 + 70.0 * mk, 0.55 * ar, 1.3, 1.6, 0.42)
            _leaflet(heart[k], (u_r - ar + 1.0, vbk), -15.0 - 70.0 * mk, 0.7 * ar, 1.3, 1.6, 0.42)
    return heart


def render_a4c(a: Anatomy, n_phases: int = N_PHASES) -> np.ndarray:
    """Apical four-chamber view (see the module doc)."""
    return _apical(a, n_phases, four=True)


def render_a2c(a: Anatomy, n_phases: int = N_PHASES) -> np.ndarray:
    """Apical two-chamber view (see the module doc)."""
    return _apical(a, n_phases, four=False)


RENDERERS = {"psax": render_psax, "a4c": render_a4c, "a2c": render_a2c}
