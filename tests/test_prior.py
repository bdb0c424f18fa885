"""Pose prior: limits, coupling, collisions, orientations, determinism."""

import numpy as np
import pytest
import torch

from hand_models.joints import JOINT_INDEX, MANO_JOINT_NAMES
from hand_models.prior import PoseBatch, PosePrior


@pytest.fixture(scope="module")
def prior(open_hand):
    return PosePrior(open_hand)


@pytest.fixture(scope="module")
def poses(prior):
    return prior.sample(600, np.random.default_rng(7))


def test_samples_respect_limits_and_shapes(prior, poses):
    assert len(poses) == 600
    assert poses.hand_pose.shape == (600, 15, 3) and poses.betas.shape == (600, prior.model.num_betas)
    assert prior.within_limits(poses.hand_pose).all()
    assert np.abs(poses.betas).max() <= prior.shape_clip + 1e-6
    # Limits bite: a pose far outside them is recognised as such.
    bad = poses.hand_pose[:1].copy()
    bad[0, MANO_JOINT_NAMES.index("index_pip") - 1] = prior.bases[MANO_JOINT_NAMES.index("index_pip") - 1][:, 0] * -1.0
    assert not prior.within_limits(bad)[0]


def test_dip_follows_pip(prior, poses):
    a = prior.anatomical(poses.hand_pose)
    for f in ("index", "middle", "ring", "pinky"):
        pip = a[:, MANO_JOINT_NAMES.index(f"{f}_pip") - 1, 0]
        dip = a[:, MANO_JOINT_NAMES.index(f"{f}_dip") - 1, 0]
        assert np.corrcoef(pip, dip)[0, 1] > 0.8


def test_poses_are_varied(prior, poses):
    flex = prior.anatomical(poses.hand_pose)[..., 0]
    assert flex.std(0).min() > np.radians(8)  # every joint moves
    curled = flex[:, MANO_JOINT_NAMES.index("middle_pip") - 1] > np.radians(70)
    straight = flex[:, MANO_JOINT_NAMES.index("middle_pip") - 1] < np.radians(20)
    assert curled.mean() > 0.05 and straight.mean() > 0.1


def test_samples_are_collision_free_and_collisions_are_caught(prior, poses):
    assert prior.collision_free(poses).all()
    # Index folded across the middle finger: rejected.
    angles = np.zeros((1, 15, 3))
    angles[0, MANO_JOINT_NAMES.index("index_mcp") - 1] = (0.0, np.radians(-22), 0.0)
    angles[0, MANO_JOINT_NAMES.index("middle_mcp") - 1] = (0.0, np.radians(22), 0.0)
    crossed = PoseBatch(prior.from_anatomical(angles).astype(np.float32), np.zeros((1, prior.model.num_betas), np.float32),
                        np.zeros((1, 3), np.float32))
    flat = PoseBatch(np.zeros((1, 15, 3), np.float32), crossed.betas, crossed.global_orient)
    assert prior.collision_free(flat)[0]
    assert not prior.collision_free(crossed)[0]


def test_orientations_mostly_show_the_palm(prior, poses):
    with torch.no_grad():
        j = prior.model.keypoints(torch.from_numpy(poses.hand_pose), torch.from_numpy(poses.betas),
                                  torch.from_numpy(poses.global_orient)).joints.numpy()
    forward = j[:, JOINT_INDEX["middle_mcp"]] - j[:, 0]
    lateral = j[:, JOINT_INDEX["index_mcp"]] - j[:, JOINT_INDEX["pinky_mcp"]]
    normal = np.cross(lateral, forward)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    towards_camera = -normal[:, 2]  # the camera looks along +z
    assert (towards_camera > 0).mean() > 0.7  # palm visible most of the time
    assert (towards_camera < -0.5).mean() > 0.03  # backs of hands too
    assert (forward[:, 1] < 0).mean() > 0.6  # fingers mostly up (OpenCV y down)
    # Third-person camera: the forearm (opposite the fingers) never points far towards the camera.
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    assert forward[:, 2].max() <= np.sin(np.radians(20)) + 0.02


def test_sampling_is_deterministic(prior):
    a = prior.sample(20, np.random.default_rng(3))
    b = prior.sample(20, np.random.default_rng(3))
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("hand_pose", "betas", "global_orient"))


def test_perturb_stays_within_limits(prior, poses):
    moved = prior.perturb(poses[:50], np.random.default_rng(1))
    assert prior.within_limits(moved.hand_pose).all()
    assert not np.allclose(moved.hand_pose, poses.hand_pose[:50])
