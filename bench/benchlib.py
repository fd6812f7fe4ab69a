"""Shared benchmark plumbing: machine description, peak memory of a process tree, and
replacing one section of docs/benchmarks.md."""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}"


def stamp() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}; "
            f"load average {load} (other jobs running inflate every figure).")


def process_role(process: psutil.Process, root_pid: int) -> str | None:
    """``driver``, ``jvm`` or ``workers`` for one process of a measured tree; ``None`` for
    a JVM's short-lived launcher child.

    The JVM starts Spark's Python daemon with ``posix_spawn`` (vfork semantics): until the
    child execs, it shares the JVM's address space and reports the JVM's whole RSS under
    the name of the forking thread. Counting it summed the JVM twice in a sample (a
    1 GB night's "workers" peak read 4,554 MiB, of which 2,032 MiB was such a child).
    """
    if process.pid == root_pid:
        return "driver"
    name = process.name()
    if name == "java":
        return "jvm"
    if not name.startswith("python"):
        try:
            if process.parent().name() == "java":
                return None
        except (psutil.Error, AttributeError):
            pass
    return "workers"


def run_measured(command: list[str], env: dict | None = None, cwd: Path = REPO_ROOT,
                 poll_s: float = 0.2) -> dict:
    """Run ``command``; wall seconds, exit code and peak RSS (MiB) summed over its process tree.

    ``peak_rss_by_role_mib``: each role's own peak (not simultaneous): ``driver`` (the
    command's process), ``jvm`` (java processes: Spark's driver JVM), ``workers`` (the rest:
    Spark's Python daemon and workers, TorchDistributor processes), so a growing total
    can be traced to where it grows.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(process.pid)
    peak = 0
    roles = {"driver": 0, "jvm": 0, "workers": 0}
    output: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            now = {"driver": 0, "jvm": 0, "workers": 0}
            for p in tree:
                role = process_role(p, root.pid)
                if role is not None:
                    now[role] += p.memory_info().rss
            peak = max(peak, sum(now.values()))
            roles = {k: max(roles[k], now[k]) for k in roles}
        except psutil.Error:
            pass
        time.sleep(poll_s)
    reader.join(timeout=10)
    return {"seconds": time.perf_counter() - start, "returncode": process.returncode,
            "peak_rss_mib": peak / 2**20, "peak_rss_by_role_mib": {k: v / 2**20 for k, v in roles.items()},
            "output": "".join(output)}


def replace_section(heading: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the ``## heading`` section of the benchmarks file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")
