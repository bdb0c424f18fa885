"""Fitting poses to joint labels, and the pose files it writes."""

import numpy as np
import pytest
import torch

from hand_models.fitting import fit
from hand_models.poses import load_pose_file, save_pose_file
from hand_models.prior import PosePrior
from render.camera import NYU_KINECT, uvd_to_xyz


@pytest.fixture(scope="module")
def prior(open_hand):
    return PosePrior(open_hand)


def test_fit_recovers_prior_poses(open_hand, prior):
    poses = prior.sample(24, np.random.default_rng(5))
    transl = np.random.default_rng(6).uniform([-0.1, -0.1, 0.6], [0.1, 0.1, 0.9], (24, 3)).astype(np.float32)
    with torch.no_grad():
        target = open_hand.keypoints(*(torch.from_numpy(x) for x in (poses.hand_pose, poses.betas, poses.global_orient, transl))).joints.numpy()
    result = fit(open_hand, prior, target, "21", fit_shape=True, steps=200)
    assert np.median(result.residual) < 0.003
    assert prior.within_limits(result.poses.hand_pose).all()
    # The fitted parameters reproduce the fitted joints through the model itself.
    with torch.no_grad():
        again = open_hand(*(torch.from_numpy(x) for x in (result.poses.hand_pose, result.poses.betas,
                                                           result.poses.global_orient, result.transl))).joints.numpy()
    assert np.allclose(np.linalg.norm(again - target, axis=-1), result.residual, atol=2e-4)


def test_fit_nyu_labels(open_hand, prior, shared):
    uvd = np.loadtxt(shared / "eval_anchors/nyu/nyu_test_groundtruth_label.txt")[::258]
    xyz = uvd_to_xyz(uvd.reshape(-1, 14, 3), NYU_KINECT) / 1000.0
    result = fit(open_hand, prior, xyz, "nyu14", fit_shape=True, steps=200)
    assert result.residual.mean() < 0.008  # the goal for all 8252 poses
    assert prior.within_limits(result.poses.hand_pose).all()


def test_fit_rejects_wrong_joint_count(open_hand, prior):
    with pytest.raises(ValueError, match="14, 3"):
        fit(open_hand, prior, np.zeros((2, 21, 3)), "nyu14")


def test_pose_file_round_trip_and_refusals(tmp_path, prior):
    poses = prior.sample(5, np.random.default_rng(0))
    path = tmp_path / "poses.npz"
    save_pose_file(path, poses, transl=np.zeros((5, 3), np.float32))
    back, extra = load_pose_file(path, prior.model.num_betas)
    assert np.array_equal(back.hand_pose, poses.hand_pose) and "transl" in extra
    assert not list(tmp_path.glob("*.tmp"))

    with pytest.raises(ValueError, match="shape coefficients"):
        load_pose_file(path, prior.model.num_betas + 2)
    np.savez(tmp_path / "short.npz", hand_pose=poses.hand_pose, betas=poses.betas)
    with pytest.raises(ValueError, match=r"short\.npz: pose file lacks 'global_orient'"):
        load_pose_file(tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.npz: not a pose \.npz \(not a zip archive\)$"):
        load_pose_file(tmp_path / "junk.npz")
    bad = dict(hand_pose=poses.hand_pose.copy(), betas=poses.betas, global_orient=poses.global_orient)
    bad["hand_pose"][0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(ValueError, match="finite"):
        load_pose_file(tmp_path / "nan.npz")
