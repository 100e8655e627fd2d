"""Run the slow parts of `make test` side by side: the unit tests and each chapter under nbval.

    python tests/run_jobs.py --jobs 2 [--unit] [--nbval NB ...] [--nbval-env VAR=VALUE ...]

Every job is its own pytest process on one torch thread (OMP_NUM_THREADS=1), so N jobs fill N
cores without oversubscribing them; the chapters that ask for two threads get one here
(`device.set_threads`). Jobs start longest first, the chapters' length read from the execution times
stored in their cells, and the next job starts as soon as a worker is free. Each job's output goes to
_build/test-logs/<job>.log; a failed job's output is printed in full. Each job's temporary files
(TMPDIR: pytest's tmp_path, the folders the chapters write into) go in a folder of its own, removed
when the job ends, even where nbval killed a chapter's kernel before it could clean up. The exit
status is 1 if any job failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "_build" / "test-logs"
UNIT_SECONDS = 300.0  # about what the unit tests take on one thread; only the order of the jobs depends on it


def stored_seconds(notebook: Path) -> float:
    """The execution time a chapter's cells recorded when its outputs were stored (0 if none did)."""
    total = 0.0
    for cell in json.loads(notebook.read_text(encoding="utf-8")).get("cells", []):
        stamps = cell.get("metadata", {}).get("execution", {})
        start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
        if start and end:
            total += (datetime.fromisoformat(end.replace("Z", "+00:00"))
                      - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    return total


def plan(unit: bool, notebooks: list[Path], nbval_env: dict[str, str]) -> list[dict]:
    """The jobs, longest first: name, the pytest arguments, extra environment, expected seconds."""
    jobs = []
    if unit:
        jobs.append({"name": "unit", "args": ["tests", "--ignore=tests/browser", "-q"], "env": {},
                     "seconds": UNIT_SECONDS})
    for nb in notebooks:
        jobs.append({"name": nb.stem, "env": nbval_env, "seconds": stored_seconds(nb),
                     "args": ["--nbval", str(nb), "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", "-q"]})
    return sorted(jobs, key=lambda job: -job["seconds"])


def run(job: dict, one_thread: bool) -> tuple[dict, int, float]:
    env = {**os.environ, **({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if one_thread else {}), **job["env"]}
    log = LOGS / f"{job['name']}.log"
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out, tempfile.TemporaryDirectory(prefix=f"dn-{job['name']}-") as tmp:
        code = subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *job["args"]],
                               cwd=ROOT, env={**env, "TMPDIR": tmp}, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    return job, code, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="jobs at once (default: the CPU count)")
    parser.add_argument("--unit", action="store_true", help="run the unit tests (tests/, without tests/browser)")
    parser.add_argument("--nbval", nargs="*", default=[], type=Path, metavar="NB", help="chapters to check with nbval")
    parser.add_argument("--nbval-env", nargs="*", default=[], metavar="VAR=VALUE",
                        help="environment for the nbval jobs (e.g. ATEN_CPU_CAPABILITY=default)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    missing = [str(nb) for nb in args.nbval if not nb.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    bad = [item for item in args.nbval_env if "=" not in item]
    if bad:
        parser.error(f"--nbval-env takes VAR=VALUE, got {', '.join(bad)}")
    jobs = plan(args.unit, args.nbval, dict(item.split("=", 1) for item in args.nbval_env))
    if not jobs:
        parser.error("nothing to run: give --unit and/or --nbval NB ...")

    LOGS.mkdir(parents=True, exist_ok=True)
    one_thread = args.jobs > 1  # side by side, each job on one core; alone, torch's own count
    print(f"== {len(jobs)} test jobs on {args.jobs} worker(s){', one torch thread each' if one_thread else ''}; "
          f"logs in {LOGS.relative_to(ROOT)}/", flush=True)
    start, failed = time.perf_counter(), []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for job, code, seconds in pool.map(lambda job: run(job, one_thread), jobs):
            # pool.map yields in submission order; each job already ran as soon as a worker was free
            last = (LOGS / f"{job['name']}.log").read_text(encoding="utf-8").strip().splitlines()
            print(f"   {job['name']:<28} {'ok' if code == 0 else f'FAILED ({code})':<12} {seconds:6.0f} s   "
                  f"{last[-1] if last else ''}", flush=True)
            if code:
                failed.append(job["name"])
    for name in failed:
        log = (LOGS / f"{name}.log").read_text(encoding="utf-8")
        print(f"\n== output of the failed job {name}\n" + log, flush=True)
    print(f"== {len(jobs) - len(failed)} of {len(jobs)} jobs passed in {time.perf_counter() - start:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
