"""Surfaces around a target hand (render.scene): the arm always runs on to the body, as on real frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hand_models.joints import JOINT_INDEX, NYU14_NAMES
from render import forearm, scene
from render.camera import NYU_KINECT, uvd_to_xyz
from render.gl import choose_backend
from render.renderer import DepthRenderer, Window
from training.localize import locate_hand

PALM = NYU14_NAMES.index("palm_center")


def _rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation turning unit vector a onto unit vector b (not antiparallel)."""
    v, c = np.cross(a, b), float(a @ b)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1.0 + c)


def _placed_hand(model, away_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The open hand, fingers up and tilted `away_deg` away from the camera, palm centre at 0.7 m:
    vertices, joints, palm centre (m) and faces."""
    zeros = torch.zeros(1, model.num_betas, dtype=torch.float32)
    with torch.no_grad():
        out = model(torch.zeros(1, 45), zeros, torch.zeros(1, 3))
    verts, joints, nyu14 = (t[0].double().numpy() for t in (out.vertices, out.joints, out.nyu14))
    fingers = joints[JOINT_INDEX["middle_mcp"]] - joints[JOINT_INDEX["wrist"]]
    angle = np.radians(away_deg)
    rot = _rotation(fingers / np.linalg.norm(fingers), np.array([0.0, -np.cos(angle), np.sin(angle)]))
    palm = np.array([0.0, 0.0, 0.7])

    def place(x: np.ndarray) -> np.ndarray:
        return (x - nyu14[PALM]) @ rot.T + palm

    return place(verts), place(joints), palm, np.asarray(model.faces, dtype=np.int64)


@pytest.fixture(scope="module")
def hand_away(open_hand):
    """Tilted 30 degrees away: its forearm comes towards the camera, as NYU's poses sometimes have it."""
    return _placed_hand(open_hand, 30.0)


def _params(body_gap: float | None) -> scene.SceneParams:
    return scene.SceneParams(arm=forearm.ForearmParams(length=0.26, flexion_deg=0.0, deviation_deg=0.0, width_scale=0.95),
                             body_gap=body_gap, body_offset=(0.05, 0.15), body_size=(0.38, 0.70), body_yaw_deg=10.0,
                             table_drop=None, table_tilt_deg=0.0, wall_depth=None)


def _arm_end(joints: np.ndarray, palm: np.ndarray, p: scene.SceneParams) -> np.ndarray:
    upper_arm = scene.scene_meshes(joints, palm, p)[1][0]
    return upper_arm[-1]


def test_the_arm_ends_inside_the_torso(hand_away):
    _, joints, palm, _ = hand_away
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = scene.SceneParams.sample(rng, body_prob=1.0)
        torso = scene.body_mesh(palm, p)[0]
        end = _arm_end(joints, palm, p)
        assert torso[:, 0].min() < end[0] < torso[:, 0].max()
        assert torso[:, 1].min() < end[1] < torso[:, 1].max()
        # Behind the torso's front where the arm meets it, within its depth.
        front = torso[np.argmin(np.linalg.norm(torso[:, :2] - end[:2], axis=1)), 2]
        assert front - 0.02 < end[2] < front + 0.2


def test_without_a_torso_the_arm_leaves_the_frame(hand_away):
    _, joints, palm, _ = hand_away
    end = _arm_end(joints, palm, _params(None))
    assert abs(end[0]) / end[2] > NYU_KINECT.cx / NYU_KINECT.fx


def test_no_arm_surface_nearer_than_the_renderers_near_limit(hand_away):
    _, joints, palm, _ = hand_away
    near = palm - np.array([0.0, 0.0, 0.25])   # at 0.45 m the elbow would come within 0.30 m
    shifted = joints - palm + near
    unshortened = forearm.forearm_mesh(shifted, _params(0.2).arm)[-1]
    assert unshortened[2] < scene.MIN_DEPTH_M + 0.05   # the setting this test is about
    for verts, _ in scene.scene_meshes(shifted, near, _params(0.2))[:2]:
        assert verts[:, 2].min() >= scene.MIN_DEPTH_M - 1e-6


@pytest.mark.parametrize("away_deg", [-10.0, 15.0])
def test_a_hand_held_close_in_front_of_the_body_is_found(open_hand, away_deg):
    """A torso 12 cm behind the palm, the arm joining them. The detector's 200 mm depth band once
    reached the body, and the palm it found was the torso's widest part, 12 to 17 cm off; and a
    hand tilted away put its fingers in the band's back, which the detector took for the arm's exit."""
    verts, joints, palm, faces = _placed_hand(open_hand, away_deg)
    choose_backend()
    mesh = scene.merge([(verts, faces)] + scene.scene_meshes(joints, palm, _params(0.12)))
    with DepthRenderer(atlas_width=1024, atlas_height=512, znear=0.1, zfar=5.0) as renderer:
        depth = 1000.0 * renderer.render([mesh], [Window.full(NYU_KINECT)], NYU_KINECT)[0]
    found = uvd_to_xyz(locate_hand(depth, NYU_KINECT).centre_uvd, NYU_KINECT)
    assert np.linalg.norm(found - palm * 1000.0) < 30.0
