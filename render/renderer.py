"""Exact depth rendering of many meshes per GL call, each into its own window of one camera.

Why this is not a plain pyrender loop:

* pyrender's offscreen framebuffer is 4x multisampled and resolves depth by picking a sample, so
  depth is not the surface depth at the pixel centre and rasterisation costs four times more.
  `_DepthOnlyRenderer` keeps pyrender's scene, shader and draw code but renders into a
  single-sample 32-bit float depth buffer and reads back only the rows that were drawn.
* Rendering cost on llvmpipe grows with pixels, and every GL call has a fixed Python and driver
  overhead. A hand covers a small window of the 640x480 frame, so each mesh is rendered only in
  its window, and the windows of many meshes are packed as tiles into one large framebuffer
  ("atlas") and drawn with one call.
* Vertices are projected on the CPU in float64 with the camera's pinhole model and snapped to the
  rasteriser's 1/256-pixel grid; the atlas has power-of-two sides so normalised device
  coordinates are exact in float32. A tile therefore sees exactly the same sub-pixel vertex
  positions as the full frame, shifted by whole pixels: its coverage equals the full-frame
  render's pixel for pixel. Depth is written as OpenGL's NDC depth, which is affine in 1/z and
  hence interpolated exactly as a perspective projection would, then turned back into metres in
  float64; the rasteriser's float32 interpolation depends on the position in the framebuffer, so
  window and full-frame depth differ by micrometres (< 0.05 mm), which changes the rounded
  millimetre of ~0.02 % of pixels by 1 (tests/test_render_renderer.py checks all of this).

Pixel (i, j) of a window with origin (u0, v0) is full-frame pixel (u0 + i, v0 + j) whose centre
is at u = u0 + i, v = v0 + j in the convention of render.camera (u = fx * x / z + cx).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from render.camera import Intrinsics
from render.gl import create_platform, release_platform

SUBPIXEL = 256  # llvmpipe and NVIDIA rasterise on an 8-bit sub-pixel grid


@dataclass(frozen=True)
class Window:
    """A rectangle of the full frame: top-left pixel (u0, v0) and size in pixels."""

    u0: int
    v0: int
    width: int
    height: int

    @classmethod
    def full(cls, cam: Intrinsics) -> "Window":
        return cls(0, 0, cam.width, cam.height)

    def contains(self, uv: np.ndarray) -> bool:
        """True when every projected point lies strictly inside the window's pixels."""
        return bool(uv[:, 0].min() > self.u0 - 0.5 and uv[:, 0].max() < self.u0 + self.width - 0.5
                    and uv[:, 1].min() > self.v0 - 0.5 and uv[:, 1].max() < self.v0 + self.height - 0.5)


def project(points: np.ndarray, cam: Intrinsics) -> np.ndarray:
    """(N, 3) camera points in metres -> (N, 2) full-frame pixel coordinates (float64)."""
    points = np.asarray(points, dtype=np.float64)
    inv_z = 1.0 / points[:, 2]
    return np.stack([points[:, 0] * inv_z * cam.fx + cam.cx, points[:, 1] * inv_z * cam.fy + cam.cy], 1)


def bounding_window(uv: np.ndarray, cam: Intrinsics, margin: int = 2) -> Window:
    """Smallest window, grown by `margin` pixels and clipped to the frame, holding all points."""
    u0 = max(int(np.floor(uv[:, 0].min())) - margin, 0)
    v0 = max(int(np.floor(uv[:, 1].min())) - margin, 0)
    u1 = min(int(np.ceil(uv[:, 0].max())) + margin + 1, cam.width)
    v1 = min(int(np.ceil(uv[:, 1].max())) + margin + 1, cam.height)
    if u1 <= u0 or v1 <= v0:
        raise ValueError("the mesh projects entirely outside the frame")
    return Window(u0, v0, u1 - u0, v1 - v0)


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def _depth_only_renderer_class():
    """pyrender.Renderer with a single-sample float depth framebuffer (see module docstring)."""
    from OpenGL import GL
    from pyrender.renderer import Renderer

    class _DepthOnlyRenderer(Renderer):
        read_rows: int = 0

        def _configure_main_framebuffer(self):
            dims = (self.viewport_width, self.viewport_height)
            if self._main_fb is not None and dims != self._main_fb_dims:
                self._delete_main_framebuffer()
            if self._main_fb is None:
                # depth only: no colour attachment to clear and write (~10 % of the render time)
                self._main_db = GL.glGenRenderbuffers(1)
                GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, self._main_db)
                GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT32F, *dims)
                self._main_fb = GL.glGenFramebuffers(1)
                GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, self._main_fb)
                GL.glFramebufferRenderbuffer(GL.GL_DRAW_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT,
                                             GL.GL_RENDERBUFFER, self._main_db)
                GL.glDrawBuffer(GL.GL_NONE)
                GL.glReadBuffer(GL.GL_NONE)
                # pyrender draws into the multisampled buffer; make that the same single buffer.
                self._main_fb_ms, self._main_db_ms = self._main_fb, self._main_db
                self._main_fb_dims = dims

        def _delete_main_framebuffer(self):
            if self._main_fb is not None:
                GL.glDeleteFramebuffers(1, [self._main_fb])
                GL.glDeleteRenderbuffers(1, [self._main_db])
            self._main_fb = self._main_db = self._main_fb_ms = self._main_db_ms = None
            self._main_fb_dims = (None, None)

        def _read_main_framebuffer(self, scene, flags):
            width, height = self._main_fb_dims
            rows = self.read_rows or height
            GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb)
            buf = GL.glReadPixels(0, height - rows, width, rows, GL.GL_DEPTH_COMPONENT, GL.GL_FLOAT)
            return np.frombuffer(buf, dtype=np.float32).reshape(rows, width)[::-1]

    return _DepthOnlyRenderer


def _ndc_camera_class():
    import pyrender

    class _NDCCamera(pyrender.Camera):
        """Vertices arrive already projected to normalised device coordinates."""

        def get_projection_matrix(self, width=None, height=None):
            return np.eye(4)

    return _NDCCamera


class DepthRenderer:
    """Renders meshes into depth windows of a pinhole camera, many meshes per GL call.

    One instance owns one GL context; create one per process. Depth is returned in metres as
    float32 with 0 where no surface was hit. `znear`/`zfar` bound the depths that can be drawn.
    Back faces are culled (pyrender's depth-only pass always culls), so meshes must wind their
    triangles counter-clockwise seen from outside, as MANO and render.forearm do.
    """

    def __init__(self, atlas_width: int = 2048, atlas_height: int = 1024,
                 znear: float = 0.05, zfar: float = 20.0) -> None:
        import pyrender

        self._pyrender = pyrender
        self.atlas = (_next_pow2(atlas_width), _next_pow2(atlas_height))
        self.znear, self.zfar = float(znear), float(zfar)
        self._platform = create_platform(*self.atlas)
        self._renderer = _depth_only_renderer_class()(*self.atlas)
        self._camera = _ndc_camera_class()(znear=self.znear, zfar=self.zfar)
        self._flags = pyrender.RenderFlags.DEPTH_ONLY | pyrender.RenderFlags.OFFSCREEN

    def close(self) -> None:
        if self._renderer is not None:
            self._platform.make_current()
            self._renderer.delete()
            release_platform(self._platform)
            self._renderer = self._platform = None

    def __enter__(self) -> "DepthRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(self, meshes: Sequence[tuple[np.ndarray, np.ndarray]], windows: Sequence[Window],
               cam: Intrinsics) -> list[np.ndarray]:
        """Depth windows (float32 metres, (h, w)) of each (vertices (V, 3) m, faces (F, 3)) mesh.

        Vertices are in the camera's OpenCV frame (x right, y down, z forward) and must lie in
        front of the camera between znear and zfar.
        """
        if len(meshes) != len(windows):
            raise ValueError("one window per mesh")
        out: list[np.ndarray | None] = [None] * len(meshes)
        projected = []
        for verts, _ in meshes:
            verts = np.asarray(verts, dtype=np.float64)
            z = verts[:, 2]
            if z.min() <= self.znear or z.max() >= self.zfar:
                raise ValueError(f"mesh depth {z.min():.3f}..{z.max():.3f} m outside the renderer's "
                                 f"range ({self.znear}, {self.zfar})")
            projected.append(project(verts, cam))
        # Meshes that spill over their window would bleed into neighbouring tiles: draw them alone.
        batch = [i for i, (uv, win) in enumerate(zip(projected, windows)) if win.contains(uv)]
        alone = [i for i in range(len(meshes)) if i not in set(batch)]
        # tallest first: shelves of similar heights waste little of the atlas (and of readback)
        pending = sorted(batch, key=lambda i: (-windows[i].height, i))
        while pending:
            placed, pending = self._pack(pending, windows)
            self._draw(placed, meshes, projected, windows, out)
        for i in alone:
            self._draw([(i, 0, 0)], meshes, projected, windows, out)
        return out  # type: ignore[return-value]

    def render_full(self, verts: np.ndarray, faces: np.ndarray, cam: Intrinsics) -> np.ndarray:
        """The whole frame of one mesh (the reference that windows are checked against)."""
        return self.render([(verts, faces)], [Window.full(cam)], cam)[0]

    def _pack(self, order: list[int], windows: Sequence[Window]) -> tuple[list, list[int]]:
        """Shelf-pack windows into the atlas in the given order; return placements and the rest."""
        aw, ah = self.atlas
        x = y = shelf = 0
        placed = []
        for k, i in enumerate(order):
            w, h = windows[i].width, windows[i].height
            if w > aw or h > ah:
                raise ValueError(f"window {w}x{h} exceeds the {aw}x{ah} atlas")
            if x + w > aw:
                x, y, shelf = 0, y + shelf, 0
            if y + h > ah:
                return placed, order[k:]
            placed.append((i, x, y))
            x, shelf = x + w, max(shelf, h)
        return placed, []

    def _draw(self, placed, meshes, projected, windows, out) -> None:
        aw, ah = self.atlas
        n, f = self.znear, self.zfar
        ids = [i for i, _, _ in placed]
        counts = np.array([len(meshes[i][0]) for i in ids])
        uv = np.concatenate([projected[i] for i in ids])
        z = np.concatenate([np.asarray(meshes[i][0], dtype=np.float64)[:, 2] for i in ids])
        shift = np.array([(tx - windows[i].u0 + 0.5, ty - windows[i].v0 + 0.5) for i, tx, ty in placed])
        # Window coordinates of the pixel-centre convention (centre of pixel k at k + 0.5),
        # snapped to the sub-pixel grid so that every tile offset gives identical fractions.
        xyw = np.round((uv + np.repeat(shift, counts, axis=0)) * SUBPIXEL) / SUBPIXEL
        z_ndc = (f + n) / (f - n) - 2.0 * f * n / ((f - n) * z)
        positions = np.stack([xyw[:, 0] * (2.0 / aw) - 1.0, 1.0 - xyw[:, 1] * (2.0 / ah), z_ndc], 1)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        indices = np.concatenate([np.asarray(meshes[i][1], dtype=np.uint32) + np.uint32(o)
                                  for i, o in zip(ids, first)])
        rows = max(ty + windows[i].height for i, _, ty in placed)
        pyrender = self._pyrender
        prim = pyrender.Primitive(positions=positions.astype(np.float32), indices=indices)
        scene = pyrender.Scene()
        scene.add(pyrender.Mesh([prim]))
        scene.add(self._camera)
        self._platform.make_current()
        self._renderer.read_rows = rows
        zbuf = self._renderer.render(scene, self._flags)
        # (pyrender frees this batch's GL buffers when the next scene is drawn)
        for i, tx, ty in placed:
            win = windows[i]
            tile = zbuf[ty:ty + win.height, tx:tx + win.width].astype(np.float64)
            hit = tile < 1.0
            depth = np.zeros(tile.shape, dtype=np.float32)
            z_ndc = 2.0 * tile[hit] - 1.0
            depth[hit] = (2.0 * n * f) / (f + n - z_ndc * (f - n))
            out[i] = depth
