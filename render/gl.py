"""Offscreen OpenGL backend selection (EGL first, OSMesa as fallback).

PyOpenGL binds its platform when it is first imported, so a process cannot try EGL and then
switch to OSMesa. The choice is therefore made by probing each backend in a short-lived child
process and exporting the winner as PYOPENGL_PLATFORM, which this process and every worker it
starts inherit. EGL runs on Mesa llvmpipe on CPU machines and on the NVIDIA driver on GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys

BACKENDS: tuple[str, ...] = ("egl", "osmesa")
INSTALL_HINT = ("install the Debian packages libegl1 and libgl1 (EGL) or libosmesa6 (OSMesa), "
                "and the Python package pyrender-maintained (PyPI pyrender 0.1.45 fails with numpy 2)")

_PROBE = """
import os, sys
os.environ["PYOPENGL_PLATFORM"] = sys.argv[1]
from render.gl import create_platform
platform = create_platform(8, 8)
platform.delete_context()
"""


class GLUnavailable(RuntimeError):
    """No offscreen OpenGL backend can create a context on this machine."""


def probe(backend: str, timeout: float = 120.0) -> str | None:
    """Try to create a context with `backend` in a child process; None if it works, else why not."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, backend], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def choose_backend(preferred: str | None = None) -> str:
    """Return the backend to use and export it as PYOPENGL_PLATFORM.

    An explicit `preferred` or an already exported PYOPENGL_PLATFORM is trusted without probing
    (the user asked for it); otherwise EGL, then OSMesa.
    """
    chosen = preferred or os.environ.get("PYOPENGL_PLATFORM")
    if chosen:
        if chosen not in BACKENDS:
            raise GLUnavailable(f"unsupported GL backend {chosen!r}; choose one of {', '.join(BACKENDS)}")
        os.environ["PYOPENGL_PLATFORM"] = chosen
        return chosen
    failures = []
    for backend in BACKENDS:
        why = probe(backend)
        if why is None:
            os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
        failures.append(f"{backend}: {why}")
    raise GLUnavailable(f"no OpenGL backend works ({'; '.join(failures)}); {INSTALL_HINT}")


def create_platform(width: int, height: int):
    """Create and make current an offscreen GL context of the exported backend."""
    backend = os.environ.get("PYOPENGL_PLATFORM") or choose_backend()
    if backend == "egl":
        from pyrender.platforms.egl import EGLPlatform
        platform = EGLPlatform(width, height)
    elif backend == "osmesa":
        from pyrender.platforms.osmesa import OSMesaPlatform
        platform = OSMesaPlatform(width, height)
    else:
        raise GLUnavailable(f"unsupported GL backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    platform.init_context()
    platform.make_current()
    return platform


def release_platform(platform) -> None:
    """Destroy one context. pyrender's EGL delete_context also terminates the display, which
    is shared by every EGL context of the process and would break the others."""
    if os.environ.get("PYOPENGL_PLATFORM") == "egl":
        from OpenGL.EGL import EGL_NO_CONTEXT, EGL_NO_SURFACE, eglDestroyContext, eglMakeCurrent
        eglMakeCurrent(platform._egl_display, EGL_NO_SURFACE, EGL_NO_SURFACE, EGL_NO_CONTEXT)
        eglDestroyContext(platform._egl_display, platform._egl_context)
        platform._egl_context = platform._egl_display = None
    else:
        platform.delete_context()
