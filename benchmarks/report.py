"""Shared by the benchmark scripts: the machine they ran on, and their section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from pathlib import Path

from render.atomic import WriteError, check_writable, write_atomically

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
_HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


def machine() -> str:
    """One line: CPU model, cores, memory, and the GPU if torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    gpu = ""
    try:
        import torch
        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}"


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section `name`, keeping every other section as it is."""
    text = path.read_text() if path.exists() else _HEADER
    block = f"<!-- begin {name} -->\n{body.rstrip()}\n<!-- end {name} -->\n"
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    write_atomically(path, lambda tmp: tmp.write_text(text))


def command_line() -> str:
    """The command that is running, as a reader would type it from the repository root."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def check_outputs(*paths: Path) -> None:
    """Before measuring: every output can be written, or the script stops with one line."""
    for path in paths:
        try:
            check_writable(path)
        except WriteError as err:
            sys.exit(f"{Path(sys.argv[0]).name}: error: {err}")
