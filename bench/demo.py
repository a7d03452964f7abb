"""Wall time of `medicosam demo` (the README's main job), run as a user runs it: a fresh process.

    python bench/demo.py [--out DIR] [--threads N] [--json out.json]

The test suite checks the demo's results, never its time (a loaded machine makes it slow, not
wrong); this is where its time is measured. About 4-6 minutes on 2 idle cores with the default
single thread; record the load average next to the number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="demo output folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, help="medicosam --threads N (default: the demo's, 1)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="medicosam-demo-"))
    threads = ["--threads", str(args.threads)] if args.threads else []
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "medicosam.cli", *threads, "demo", "--out", str(out)], check=True,
                   env={**os.environ, "MEDICOSAM_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    result = {"wall_seconds": round(time.monotonic() - start, 1), "load_before": load_before,
              "load_after": os.getloadavg()[0],
              **{key: summary[key] for key in ("threads", "training_seconds", "dice_trained", "dice_untrained")}}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
