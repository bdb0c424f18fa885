"""The windowed atlas renderer: windows equal the full frame, and the camera model is pyrender's."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from render.camera import NYU_KINECT, Intrinsics
from render.gl import choose_backend
from render.renderer import DepthRenderer, Window, bounding_window, project

choose_backend()


def _meshes(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Randomly oriented capsules (hand-sized) at hand distances, all inside the NYU frame."""
    rng = np.random.default_rng(seed)
    cap = trimesh.creation.capsule(height=0.12, radius=0.03, count=[24, 24])
    out = []
    for _ in range(n):
        q = rng.normal(size=4)
        rot = trimesh.transformations.quaternion_matrix(q / np.linalg.norm(q))[:3, :3]
        t = [rng.uniform(-0.12, 0.12), rng.uniform(-0.08, 0.08), rng.uniform(0.5, 1.1)]
        out.append((np.asarray(cap.vertices) @ rot.T + t, np.asarray(cap.faces)))
    return out


@pytest.fixture(scope="module")
def renderer():
    with DepthRenderer(znear=0.2, zfar=2.5) as r:
        yield r


def test_windows_equal_full_frame(renderer):
    cam = NYU_KINECT
    meshes = _meshes(24)
    windows = [bounding_window(project(v, cam), cam) for v, _ in meshes]
    tiles = renderer.render(meshes, windows, cam)  # many tiles in one atlas
    for (verts, faces), win, tile in zip(meshes, windows, tiles):
        full = renderer.render_full(verts, faces, cam)
        crop = full[win.v0:win.v0 + win.height, win.u0:win.u0 + win.width]
        assert (full > 0).sum() == (crop > 0).sum() > 500, "window must hold the whole silhouette"
        np.testing.assert_array_equal(tile > 0, crop > 0)  # identical coverage, pixel for pixel
        hit = crop > 0
        # depth is interpolated in float32 at different framebuffer positions: micrometres apart
        assert np.abs(tile[hit] - crop[hit]).max() < 5e-5
        mm_tile, mm_full = np.round(tile * 1000), np.round(crop * 1000)
        differ = mm_tile != mm_full
        assert differ.mean() < 1e-3 and np.abs(mm_tile - mm_full).max() <= 1


def test_depth_and_coverage_match_the_pinhole_model(renderer):
    """A slanted square: every pixel centre inside its projection is covered, with the depth of
    the ray through that centre (u = fx x / z + cx, pixel k centred at k) to micrometres."""
    cam = NYU_KINECT
    a, b, z0 = 0.3, -0.2, 0.8  # plane z = z0 + a x + b y
    corners = np.array([[-0.1, -0.08], [0.12, -0.08], [0.12, 0.09], [-0.1, 0.09]])
    verts = np.array([[x, y, z0 + a * x + b * y] for x, y in corners])
    faces = np.array([[0, 2, 1], [0, 3, 2]])  # counter-clockwise seen from the camera
    depth = renderer.render_full(verts, faces, cam)
    v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    rx, ry = (u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy
    z = z0 / (1 - a * rx - b * ry)
    x, y = rx * z, ry * z
    inside = (x > -0.1) & (x < 0.12) & (y > -0.08) & (y < 0.09)
    margin = 0.002  # metres: pixel centres this close to an edge may go either way
    near_edge = (np.abs(x + 0.1) < margin) | (np.abs(x - 0.12) < margin) | \
                (np.abs(y + 0.08) < margin) | (np.abs(y - 0.09) < margin)
    np.testing.assert_array_equal((depth > 0)[~near_edge], inside[~near_edge])
    assert np.abs(depth[inside & ~near_edge] - z[inside & ~near_edge]).max() < 2e-6


def test_window_origin_shifts_principal_point(renderer):
    """A window of a custom camera equals the full frame; spilling meshes are drawn alone."""
    cam = Intrinsics(fx=300.0, fy=310.0, cx=150.5, cy=99.0, width=320, height=200)
    verts, faces = _meshes(1, seed=5)[0]
    full = renderer.render_full(verts, faces, cam)
    assert (full > 0).any()
    win = Window(40, 30, 120, 90)  # cuts through the mesh: it spills over the window
    other = _meshes(1, seed=6)[0]
    tiles = renderer.render([(verts, faces), other], [win, bounding_window(project(other[0], cam), cam)], cam)
    crop = full[30:120, 40:160]
    np.testing.assert_array_equal(tiles[0] > 0, crop > 0)
    assert np.abs(tiles[0] - crop).max() < 5e-5


def test_refuses_mesh_behind_near_plane(renderer):
    verts, faces = _meshes(1)[0]
    with pytest.raises(ValueError, match="outside the renderer's range"):
        renderer.render_full(verts - [0, 0, verts[:, 2].min() - 0.1], faces, NYU_KINECT)


def test_no_gl_backend_names_the_packages_to_install(monkeypatch):
    import render.gl as gl

    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setattr(gl, "probe", lambda backend: "cannot open display")
    with pytest.raises(gl.GLUnavailable) as err:
        gl.choose_backend()
    message = str(err.value)
    assert "egl: cannot open display" in message and "osmesa: cannot open display" in message
    assert "libegl1" in message and "libosmesa6" in message and "pyrender-maintained" in message
    with pytest.raises(gl.GLUnavailable, match="unsupported"):
        gl.choose_backend("vulkan")
