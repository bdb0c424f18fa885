"""End-to-end throughput of render-hands against the loop a user would write by hand.

    python benchmarks/render_throughput.py                 # 20,000 frames, all cores
    python benchmarks/render_throughput.py --n 100000      # the figure the issue asks for

Both sides pose hands with the same prior and model and end with 16-bit PNGs in a tar:
* hand-written: one pyrender OffscreenRenderer, a new pyrender mesh per frame, the full 640x480
  depth image (pyrender's default 4x multisampled framebuffer), PNG through Pillow, tarfile;
* render-hands: the CLI as users run it (windows packed into one GL call per 64 frames, worker
  processes, forearm, PNG, shards, manifest), timed from process start to manifest.
The table goes to its section of docs/benchmarks.md (benchmarks/report.py).
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import BENCHMARKS_MD, check_outputs, command_line, machine, write_section  # noqa: E402
from render.arguments import OneLineParser, positive_int  # noqa: E402
SECTION = "## Rendering throughput (`python benchmarks/render_throughput.py`, render-hands)"


def hand_written_loop(n: int, out: Path) -> tuple[float, float]:
    """Frames/s and CPU ms/frame of the straightforward pyrender loop (posing included, as in
    render-hands); CPU time counts all threads of the process (llvmpipe rasterises in threads)."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import pyrender
    import torch
    from PIL import Image

    from hand_models.model import HandModel
    from hand_models.prior import PosePrior
    from render.camera import NYU_KINECT as cam

    model = HandModel.load("open")
    prior = PosePrior(model)
    rng = np.random.default_rng(0)
    renderer = pyrender.OffscreenRenderer(cam.width, cam.height)
    scene = pyrender.Scene()
    camera_pose = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes -> OpenGL
    scene.add(pyrender.IntrinsicsCamera(cam.fx, cam.fy, cam.cx, cam.cy, znear=0.1, zfar=3.0), pose=camera_pose)
    start, cpu_start = time.perf_counter(), time.process_time()
    with tarfile.open(out, "w") as tar:
        for first in range(0, n, 256):
            poses = prior.sample(min(256, n - first), rng)
            with torch.no_grad():
                verts = model(torch.from_numpy(poses.hand_pose), torch.from_numpy(poses.betas),
                              torch.from_numpy(poses.global_orient)).vertices.numpy()
            for k, v in enumerate(verts):
                v = v - v.mean(0) + [0.0, 0.0, rng.uniform(0.5, 1.1)]
                node = scene.add(pyrender.Mesh([pyrender.Primitive(positions=v, indices=model.faces)]))
                depth = renderer.render(scene, flags=pyrender.RenderFlags.DEPTH_ONLY)
                scene.remove_node(node)
                buf = io.BytesIO()
                Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(buf, format="PNG")
                for name, data in ((f"{first + k:09d}.depth.png", buf.getvalue()),
                                   (f"{first + k:09d}.json", b"{}")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    rate = n / (time.perf_counter() - start)
    cpu_ms = 1000 * (time.process_time() - cpu_start) / n
    renderer.delete()
    return rate, cpu_ms


def stage_costs(n: int = 1024, sensor: str = "clean") -> dict[str, float]:
    """CPU ms per frame of each step of one render-hands worker (one thread, as in a worker)."""
    import torch

    from render.dataset import POSE_BLOCK, RenderConfig, Synthesizer
    from render.sensor import apply_sensor
    from render.shards import encode_depth_png

    torch.set_num_threads(1)
    synth = Synthesizer(RenderConfig(n=n + 64, sensor=sensor))
    list(synth.samples(0, 64))  # warm up (GL context, shaders, first allocations)
    cost: dict[str, float] = {}

    def timed(step: str, fn, *args):
        start = time.process_time()
        result = fn(*args)
        cost[step] = cost.get(step, 0.0) + time.process_time() - start
        return result

    for lo in range(64, n + 64, 64):
        timed("pose prior (hand_models)", synth._block_poses, lo // POSE_BLOCK)
        poses = synth.poses(lo, lo + 64)

        def skin():
            with torch.no_grad():
                out = synth.model(torch.from_numpy(poses.hand_pose), torch.from_numpy(poses.betas),
                                  torch.from_numpy(poses.global_orient))
            return out.vertices.double().numpy(), out.joints.double().numpy(), out.nyu14.double().numpy()

        verts, joints, nyu14 = timed("skinning (hand_models)", skin)
        posed = timed("forearm + placement", lambda: [synth._place(lo + k, poses[k:k + 1], verts[k], joints[k],
                                                                    nyu14[k]) for k in range(64)])
        depth = timed("rendering (atlas, GL, read-back)", synth.render_chunk, posed)
        for p, d in zip(posed, depth):
            win = p.windows[0]
            rng = np.random.default_rng([0, p.index, 2])
            mm = timed(f"sensor {sensor} (render.sensor)", apply_sensor, d[0], synth.config.camera,
                       (win.u0, win.v0), sensor, rng)
            timed("PNG encoding", encode_depth_png, mm)
            timed("labels + JSON", lambda: json.dumps(synth.labels(p, 0)))
    synth.close()
    return {k: 1000 * v / n for k, v in cost.items()}


def render_hands(n: int, out: Path, workers: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "render.cli", "--n", str(n), "--out", str(out), "--workers",
           str(workers), "--quiet", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    manifest = json.loads((out / "manifest.json").read_text())
    size = sum((out / s["name"]).stat().st_size for s in manifest["shards"])
    return {"wall": wall, "rate": n / wall, "bytes": size / n, "cpu_ms": 1000 * cpu / n,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def gl_renderer() -> str:
    probe = ("import os; os.environ.setdefault('PYOPENGL_PLATFORM', 'egl');"
             "from render.gl import create_platform; create_platform(8, 8);"
             "from OpenGL.GL import glGetString, GL_RENDERER; print(glGetString(GL_RENDERER).decode())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    return out or "unknown GL renderer"


def main() -> None:
    ap = OneLineParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=positive_int, default=20000, help="frames for render-hands")
    ap.add_argument("--baseline-n", type=positive_int, default=500, help="frames for the hand-written loop")
    ap.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = ap.parse_args()
    if not args.no_write:
        check_outputs(BENCHMARKS_MD)

    load = os.getloadavg()[0]
    stages = {sensor: stage_costs(sensor=sensor) for sensor in ("clean", "kinect")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, base_cpu = hand_written_loop(args.baseline_n, tmp / "baseline.tar")
        base_bytes = (tmp / "baseline.tar").stat().st_size / args.baseline_n
        print(f"hand-written loop: {base:.0f} frames/s, {base_bytes / 1e3:.1f} KB/frame, "
              f"{base_cpu:.2f} CPU ms/frame", flush=True)
        runs = []
        for sensor in ("clean", "kinect"):
            r = render_hands(args.n, tmp / sensor, args.workers, ["--sensor", sensor])
            print(f"render-hands --sensor {sensor}: {r['rate']:.0f} frames/s, {r['bytes'] / 1e3:.1f} KB/frame, "
                  f"{r['wall']:.1f} s, {r['cpu_ms']:.2f} CPU ms/frame, max RSS {r['max_rss_mb']:.0f} MB", flush=True)
            runs.append((sensor, r))
            for f in (tmp / sensor).glob("shard-*.tar"):
                f.unlink()
    cores = os.cpu_count() or 1
    rows = [f"| hand-written pyrender loop (1 process, full 640x480, hand only) | {args.baseline_n} | "
            f"{base:.0f} | 1.0x | {base_bytes / 1e3:.1f} | - | {base_cpu:.2f} | {1000 / base_cpu:.0f} |"]
    for sensor, r in runs:
        rows.append(f"| `render-hands --n {args.n} --workers {args.workers} --sensor {sensor}` | {args.n} | "
                    f"{r['rate']:.0f} | {r['rate'] / base:.1f}x | {r['bytes'] / 1e3:.1f} | {r['wall']:.1f} s | "
                    f"{r['cpu_ms']:.2f} ({base_cpu / r['cpu_ms']:.1f}x less) | {1000 * cores / r['cpu_ms']:.0f} |")
    text = "\n".join([
        SECTION,
        "",
        f"Machine: {machine()}, GL: {gl_renderer()}. Load average {load:.2f} when the run started, "
        f"{os.getloadavg()[0]:.2f} when it ended (other jobs on the machine slow every figure here).",
        f"Command: `{command_line()}`; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| pipeline | frames | frames/s | vs loop | KB/frame | wall (from process start) | CPU ms/frame | frames/s if all cores were free |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Peak resident memory of any render-hands process: {max(r['max_rss_mb'] for _, r in runs):.0f} MB "
        "(a worker holds one chunk of 64 samples and streams its shard to disk, so this does not grow with --n).",
        "CPU ms/frame counts every process of the run (workers, startup, main); the last column, "
        "cores / CPU time, is what the run would reach on an otherwise idle machine (for the "
        "single-process loop: 1000 / CPU ms, as if it had a core to itself). The loop's CPU time "
        "includes llvmpipe's raster threads.",
        "",
        "CPU time per frame of each step in one worker (one thread; 1,024 frames; "
        "`stage_costs` in the script):",
        "",
        "| step | clean, ms | kinect, ms |",
        "|---|---|---|",
        *[f"| {step.replace(' clean', '')} | {stages['clean'][step]:.3f} | "
          f"{stages['kinect'][step.replace('clean', 'kinect')]:.3f} |" for step in stages["clean"]],
        f"| total | {sum(stages['clean'].values()):.3f} | {sum(stages['kinect'].values()):.3f} |",
        "",
        "Goals (issue 3): >= 830 frames/s on this 2-core machine (500,000 frames in 10 minutes), >= 5x the "
        "hand-written loop, <= 15 KB/frame.",
        "",
    ])
    print(text)
    if not args.no_write:
        write_section("render throughput", text)


if __name__ == "__main__":
    main()
