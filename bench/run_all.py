"""``make bench``: every benchmark in turn; each writes its own section of docs/benchmarks.md.

Runs in separate processes (so one's memory does not inflate the next one's peak) and
keeps going when one fails, then exits non-zero naming the failures.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BENCHMARKS = (  # (script, arguments)
    ("bench_ingest.py", []),
    ("bench_graph.py", ["generated", "--caps", "0", "100000"]),
    ("bench_a2gnn.py", []),
    ("bench_a2gnn.py", ["--anchor-search"]),
    ("bench_split.py", []),
    ("bench_rearview.py", []),
    ("bench_detect.py", ["--shared-data", "{shared_data}"]),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=BENCH_DIR.parent.parent / "shared" / "data")
    parser.add_argument("--only", default="", help="comma-separated script names to run")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    failed = []
    for script, arguments in BENCHMARKS:
        if only and script not in only and script.removesuffix(".py") not in only:
            continue
        command = [sys.executable, str(BENCH_DIR / script),
                   *(a.format(shared_data=args.shared_data) for a in arguments)]
        print(f"== {script}", flush=True)
        start = time.perf_counter()
        if subprocess.run(command, cwd=BENCH_DIR.parent).returncode != 0:
            failed.append(script)
        print(f"== {script}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
