"""A forearm stub attached at the wrist.

Real depth captures always show the forearm leaving the hand; a hand that ends at the wrist is an
artefact a network can learn to rely on (and the hand mesh is open there). The stub is a tapered
tube with an elliptic cross-section: flat like a real forearm (wider across the palm than through
it), starting 2 cm inside the palm so that it closes the wrist opening, and pointing away from the
fingers with a random wrist bend, bent away from the camera rather than towards it (the arm of
a person facing a third-person camera goes back to the body). Its length (12 to 18 cm by default) reaches past the 150 mm half
cube of the standard NYU crop around the palm centre, so crops look like real ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from hand_models.joints import JOINT_INDEX

RINGS = 6      # cross-sections along the tube
SEGMENTS = 16  # vertices per cross-section


@dataclass(frozen=True)
class ForearmParams:
    """Per-sample forearm shape; angles in degrees, lengths in metres."""

    length: float
    flexion_deg: float    # the hand bent at the wrist towards its back (+, extension) or its palm (-)
    deviation_deg: float  # the hand bent at the wrist towards the little finger (+) or the thumb (-)
    width_scale: float    # cross-section relative to the hand's knuckle width

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "ForearmParams":
        return cls(length=float(rng.uniform(0.12, 0.18)), flexion_deg=float(rng.uniform(-30, 30)),
                   deviation_deg=float(rng.uniform(-15, 15)), width_scale=float(rng.uniform(0.85, 1.0)))

    def to_dict(self) -> dict:
        return asdict(self)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(v @ v)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.cross for two 3-vectors, without its ~20 us of axis handling (called per sample)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _rotate(v: np.ndarray, axis: np.ndarray, deg: float) -> np.ndarray:
    """Rodrigues rotation of vector v about unit axis."""
    a = math.radians(deg)
    return v * math.cos(a) + _cross(axis, v) * math.sin(a) + axis * (axis @ v) * (1 - math.cos(a))


def _faces() -> np.ndarray:
    """Counter-clockwise seen from outside (the renderer culls back faces); closed at both ends."""
    faces = []
    for r in range(RINGS - 1):
        for s in range(SEGMENTS):
            a, b = r * SEGMENTS + s, r * SEGMENTS + (s + 1) % SEGMENTS
            faces += [(a, b, a + SEGMENTS), (b, b + SEGMENTS, a + SEGMENTS)]
    first, last = RINGS * SEGMENTS, RINGS * SEGMENTS + 1  # centres of the two end caps
    top = (RINGS - 1) * SEGMENTS
    faces += [((s + 1) % SEGMENTS, s, first) for s in range(SEGMENTS)]
    faces += [(top + s, top + (s + 1) % SEGMENTS, last) for s in range(SEGMENTS)]
    return np.asarray(faces, dtype=np.int64)


FACES = _faces()
_PHI = np.linspace(0.0, 2 * np.pi, SEGMENTS, endpoint=False)
_COS, _SIN = np.cos(_PHI), np.sin(_PHI)


def _hand_frame(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, float]:
    """Wrist, unit direction wrist -> middle knuckle and its length, unit direction across the
    knuckles (pinky -> index, orthogonal to the first) and the knuckle width."""
    wrist = joints[JOINT_INDEX["wrist"]]
    palm_dir = joints[JOINT_INDEX["middle_mcp"]] - wrist
    palm_len = math.sqrt(palm_dir @ palm_dir)
    palm_dir = palm_dir / palm_len
    across = joints[JOINT_INDEX["index_mcp"]] - joints[JOINT_INDEX["pinky_mcp"]]
    knuckle_width = math.sqrt(across @ across)
    return wrist, palm_dir, palm_len, _unit(across - palm_dir * (across @ palm_dir)), knuckle_width


def orient(joints: np.ndarray, params: ForearmParams) -> ForearmParams:
    """`params` with the wrist bent the other way where the drawn bend would send the arm up
    towards a third-person camera (+z forward) rather than back towards the body. Record these:
    they are the ones the mesh is built from."""
    _, palm_dir, _, across, _ = _hand_frame(joints)
    axis = _rotate(-palm_dir, across, params.flexion_deg)
    if axis[2] < -palm_dir[2] and axis[2] < 0:
        return replace(params, flexion_deg=-params.flexion_deg)
    return params


def forearm_mesh(joints: np.ndarray, params: ForearmParams) -> np.ndarray:
    """Vertices (RINGS * SEGMENTS + 2, 3) of the stub for one posed hand with these (oriented)
    params; faces are FACES.

    `joints` are the 21 joints (metres) in hand_models.joints order; the stub only uses the wrist
    and the index, middle and pinky knuckles, so it follows the hand wherever the pose puts it.
    """
    wrist, palm_dir, palm_len, across, knuckle_width = _hand_frame(joints)
    normal = _cross(palm_dir, across)  # through the palm
    axis = _rotate(_rotate(-palm_dir, across, params.flexion_deg), normal, params.deviation_deg)
    side = _unit(across - axis * (across @ axis))
    up = _cross(axis, side)

    # The first ring sits inside the palm and the second at the wrist joint, both on the palm
    # axis; the bend happens at the wrist, so the hand's open wrist is always covered.
    t = np.linspace(0.0, 1.0, RINGS - 1)
    centres = np.concatenate([(wrist + palm_dir * min(0.02, 0.3 * palm_len))[None],
                              wrist[None, :] + (t * params.length)[:, None] * axis[None, :]])
    t = np.concatenate([[0.0], t])
    half_width = 0.5 * knuckle_width * params.width_scale * (0.85 + 0.2 * t)  # wrist narrower
    half_thick = 0.65 * half_width
    ring = (_COS[None, :, None] * half_width[:, None, None] * side
            + _SIN[None, :, None] * half_thick[:, None, None] * up)
    return closed_tube(centres, ring)


def closed_tube(centres: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Vertices in FACES' layout: RINGS cross-sections, each its centre (RINGS, 3) plus the ring's
    offsets (RINGS or 1, SEGMENTS, 3), then the two end caps' centres."""
    verts = (centres[:, None, :] + ring).reshape(-1, 3)
    return np.concatenate([verts, centres[:1], centres[-1:]], 0)


def end_half_width(verts: np.ndarray) -> float:
    """How far the last cross-section of a tube (closed_tube's layout) reaches from its centre."""
    return float(np.linalg.norm(verts[-2 - SEGMENTS:-2] - verts[-1], axis=1).max())
