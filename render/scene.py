"""Surfaces around a hand as real captures show them: the whole arm, the body behind, a table, a wall.

Real depth frames are never a hand floating in nothing, nor an arm ending in mid-air. The forearm
runs to the elbow and the upper arm on to the shoulder, so the arm always joins the body (or, with
no torso in view, leaves the frame towards a body beside it); the torso is a large surface 10 to
40 cm behind the hand (NYU's subjects hold the hand 100 to 400 mm in front of the body), a table
or the room fills the rest. A hand detector or crop that has only seen isolated hands is not
tested by synthetic frames without them, so the sim-to-real target domain (benchmarks/sim2real)
renders these surfaces with every hand.

Everything is a closed or camera-facing triangle mesh in the camera's OpenCV frame (metres), ready
for render.renderer.DepthRenderer, which culls back faces: open surfaces are wound so that their
front faces the camera.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from hand_models.joints import JOINT_INDEX
from render import forearm as forearm_mod

MIN_DEPTH_M = 0.30       # nothing comes nearer to the camera than this (renderers need a near plane)
BODY_DEPTH = 0.08        # the torso's front curves back this far at its sides
SHOULDER_INSET = 0.08    # the shoulder joint lies this far in from the torso's side and top
UPPER_ARM_THICKER = 1.15  # upper arm radius / the forearm's half width at the elbow
NO_BODY_GAP = 0.25       # with no torso in view the body stands this far behind the palm (sample()'s mid-range)
OUT_OF_VIEW = 0.7        # |x| / z beyond which a point is outside the frame (Kinect v1 0.54, SR305 0.67) ...
OUT_OF_VIEW_MARGIN = 0.15  # ... and this much further out (m), so that the whole upper arm's end is


@dataclass(frozen=True)
class SceneParams:
    """One frame's surroundings; lengths in metres, angles in degrees, offsets from the palm centre."""

    arm: forearm_mod.ForearmParams        # the forearm, wrist to elbow; the upper arm joins it to the shoulder
    body_gap: float | None                # torso front this far behind the palm centre; None: no body in view
    body_offset: tuple[float, float]      # torso centre (x, y) relative to the palm centre
    body_size: tuple[float, float]        # torso width, height
    body_yaw_deg: float                   # torso turned about the vertical axis
    table_drop: float | None              # table top this far below the palm centre; None: no table
    table_tilt_deg: float                 # camera pitch relative to the table
    wall_depth: float | None              # a wall facing the camera at this depth; None: open room

    @classmethod
    def sample(cls, rng: np.random.Generator, body_prob: float = 0.85, table_prob: float = 0.25,
               wall_prob: float = 0.5) -> "SceneParams":
        arm = forearm_mod.ForearmParams(length=float(rng.uniform(0.22, 0.30)),
                                        flexion_deg=float(rng.uniform(-30, 30)),
                                        deviation_deg=float(rng.uniform(-15, 15)),
                                        width_scale=float(rng.uniform(0.85, 1.05)))
        draws = rng.random(3)
        body_gap = float(rng.uniform(0.10, 0.40))
        body_offset = (float(rng.uniform(-0.20, 0.20)), float(rng.uniform(0.0, 0.30)))
        body_size = (float(rng.uniform(0.32, 0.44)), float(rng.uniform(0.60, 0.80)))
        body_yaw = float(rng.uniform(-30, 30))
        table_drop = float(rng.uniform(0.10, 0.30))
        table_tilt = float(rng.uniform(-8, 8))
        wall = float(rng.uniform(1.6, 3.0))
        return cls(arm, body_gap if draws[0] < body_prob else None, body_offset, body_size, body_yaw,
                   table_drop if draws[1] < table_prob else None, table_tilt,
                   wall if draws[2] < wall_prob else None)

    def to_dict(self) -> dict:
        return asdict(self)


def _grid_faces(rows: int, cols: int) -> np.ndarray:
    faces = []
    for r in range(rows - 1):
        for c in range(cols - 1):
            a, b, d, e = r * cols + c, r * cols + c + 1, (r + 1) * cols + c, (r + 1) * cols + c + 1
            faces += [(a, b, d), (b, e, d)]
    return np.asarray(faces, dtype=np.int64)


def _facing_camera(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Wind an open surface so that its front (counter-clockwise) side faces the camera at the origin."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    normal = np.cross(b - a, c - a)
    # Front faces are those whose right-handed normal (b - a) x (c - a) points at the viewer, as on
    # the closed hand and forearm meshes; flip the others.
    towards = np.einsum("ij,ij->i", normal, -(a + b + c) / 3.0) > 0
    return np.where(towards[:, None], faces, faces[:, ::-1])


def _surface(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = points.shape[:2]
    verts = points.reshape(-1, 3)
    return verts, _facing_camera(verts, _grid_faces(rows, cols))


def _torso_point(p: SceneParams, palm: np.ndarray, x: np.ndarray, y: np.ndarray, gap: float) -> np.ndarray:
    """Points on the torso's front at lateral offsets `x` and heights `y` (m, from its centre), (..., 3)."""
    u = np.arcsin(np.clip(2.0 * x / p.body_size[0], -1.0, 1.0))
    z = BODY_DEPTH * (1.0 - np.cos(u))            # 0 at the front, BODY_DEPTH at the sides
    yaw = math.radians(p.body_yaw_deg)
    centre = palm + np.array([p.body_offset[0], p.body_offset[1], gap])
    return np.stack(np.broadcast_arrays(centre[0] + x * math.cos(yaw) + z * math.sin(yaw), centre[1] + y,
                                        centre[2] - x * math.sin(yaw) + z * math.cos(yaw)), axis=-1)


def body_mesh(palm: np.ndarray, p: SceneParams) -> tuple[np.ndarray, np.ndarray]:
    """The torso's front: half an elliptic cylinder (vertical axis), BODY_DEPTH deep, turned by the yaw."""
    width, height = p.body_size
    x = 0.5 * width * np.sin(np.linspace(-math.pi / 2, math.pi / 2, 17))
    h = np.linspace(-0.5, 0.5, 9) * height
    return _surface(_torso_point(p, palm, x[None, :], h[:, None], p.body_gap))


def shoulder(palm: np.ndarray, elbow: np.ndarray, p: SceneParams) -> np.ndarray:
    """Where the upper arm meets the body: inside the torso's top corner on the elbow's side. With
    no torso in view the person stands beside the field of view, so the shoulder is moved
    sideways out of it (OUT_OF_VIEW) and the upper arm leaves the frame."""
    gap = p.body_gap if p.body_gap is not None else NO_BODY_GAP
    width, height = p.body_size
    corners = _torso_point(p, palm, np.array([-1.0, 1.0]) * (0.5 * width - SHOULDER_INSET),
                           np.array([SHOULDER_INSET - 0.5 * height]), gap)
    near = corners[np.argmin(np.linalg.norm(corners - elbow, axis=1))]
    if p.body_gap is None:
        side = 1.0 if elbow[0] >= palm[0] else -1.0
        return np.array([side * (OUT_OF_VIEW * near[2] + OUT_OF_VIEW_MARGIN), near[1], near[2]])
    return near + np.array([0.0, 0.0, 0.5 * BODY_DEPTH])    # into the torso, so no seam shows


def upper_arm_mesh(elbow: np.ndarray, shoulder_xyz: np.ndarray, radius: float) -> np.ndarray:
    """Vertices of a closed round tube from the elbow to the shoulder (faces: forearm.FACES)."""
    axis = shoulder_xyz - elbow
    axis = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    side = np.cross(helper, axis)
    side /= np.linalg.norm(side)
    up = np.cross(axis, side)             # (side, up, axis) right-handed, as the forearm's rings
    phi = np.linspace(0.0, 2 * np.pi, forearm_mod.SEGMENTS, endpoint=False)
    ring = radius * (np.cos(phi)[:, None] * side + np.sin(phi)[:, None] * up)
    centres = elbow + np.linspace(0.0, 1.0, forearm_mod.RINGS)[:, None] * (shoulder_xyz - elbow)
    return forearm_mod.closed_tube(centres, ring[None])


def table_mesh(palm: np.ndarray, p: SceneParams) -> tuple[np.ndarray, np.ndarray] | None:
    """A table top below the hand, seen from above; None when the camera would see it from below."""
    y = palm[1] + p.table_drop
    if y < 0.05:
        return None
    tilt = math.radians(p.table_tilt_deg)
    # The table starts just behind the hand: a front edge nearer than the hand would be the nearest
    # object in the frame, which no hand-pose dataset's capture setup allows.
    z = np.linspace(palm[2] + 0.03, palm[2] + 0.8, 12)
    x = np.linspace(-0.9, 0.9, 9)
    pts = np.empty((len(z), len(x), 3))
    pts[..., 0] = x[None, :]
    pts[..., 1] = y + (z[:, None] - palm[2]) * math.tan(tilt)
    pts[..., 2] = z[:, None]
    return _surface(pts)


def wall_mesh(p: SceneParams) -> tuple[np.ndarray, np.ndarray]:
    """A plane facing the camera, wider than the field of view of a 640x480, f ~ 580 px camera."""
    z = p.wall_depth
    x = np.linspace(-0.65, 0.65, 3) * z
    y = np.linspace(-0.5, 0.5, 3) * z
    pts = np.empty((3, 3, 3))
    pts[..., 0], pts[..., 1], pts[..., 2] = x[None, :], y[:, None], z
    return _surface(pts)


def scene_meshes(joints: np.ndarray, palm: np.ndarray, p: SceneParams) -> list[tuple[np.ndarray, np.ndarray]]:
    """Meshes (vertices (V, 3) m, faces) of the arm and the surroundings of one placed hand.

    `joints` are the hand's 21 joints and `palm` its palm centre, in camera coordinates (metres).
    The forearm is shortened where its elbow would come nearer to the camera than MIN_DEPTH_M plus
    the upper arm's radius; the upper arm, a little thicker than the forearm at the elbow, runs
    from there to the shoulder.
    """
    arm = forearm_mod.orient(joints, p.arm)
    wrist = joints[JOINT_INDEX["wrist"]]
    verts = forearm_mod.forearm_mesh(joints, arm)
    elbow = verts[-1]
    radius = UPPER_ARM_THICKER * forearm_mod.end_half_width(verts)
    near = MIN_DEPTH_M + radius
    if elbow[2] < near and elbow[2] < wrist[2]:
        length = arm.length * max(wrist[2] - near, 0.0) / (wrist[2] - elbow[2])
        arm = replace(arm, length=max(length, 0.05))
        verts = forearm_mod.forearm_mesh(joints, arm)
        elbow = verts[-1]
    meshes = [(verts, forearm_mod.FACES),
              (upper_arm_mesh(elbow, shoulder(palm, elbow, p), radius), forearm_mod.FACES)]
    if p.body_gap is not None:
        meshes.append(body_mesh(palm, p))
    if p.table_drop is not None:
        table = table_mesh(palm, p)
        if table is not None:
            meshes.append(table)
    if p.wall_depth is not None:
        meshes.append(wall_mesh(p))
    return meshes


def merge(meshes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One mesh from several (the renderer draws one mesh per window)."""
    offsets = np.cumsum([0] + [len(v) for v, _ in meshes[:-1]])
    return (np.concatenate([v for v, _ in meshes]),
            np.concatenate([np.asarray(f, dtype=np.int64) + o for (_, f), o in zip(meshes, offsets)]))
