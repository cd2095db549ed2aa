"""The main job: run the quick-start notebooks on the embedded models and write an HTML report.

Usage: python scripts/run_demo.py [--out reports/demo] [notebooks ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from biomed_toolkit.notebook_runner import execute_notebook, write_report

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / time.strftime("demo-%Y%m%d-%H%M%S"))
    # notebook 04 fine-tunes the 8.3 M demo with its default budget in one cell (~500 s on a free core)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    # plotly.js inline (no CDN) and offline hub access in the report
    env = {"PLOTLY_RENDERER": "notebook", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    runs = []
    for nb in notebooks:
        print(f"running {nb.relative_to(REPO) if nb.is_relative_to(REPO) else nb} ...", flush=True)
        run = execute_notebook(nb, timeout=args.timeout, env=env)
        print(f"    {'ok' if run.error is None else 'FAILED'} in {run.seconds:.0f} s", flush=True)
        runs.append(run)
    index = write_report(runs, args.out)
    print(f"\nReport written to {index.parent.resolve()}\nOpen {index.resolve()}")
    return 0 if all(r.error is None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
