"""Run a plain ``python script.py`` job from a test (no pytest, no notebook around it).

Multi-process code behaves differently in a script (Lightning's ``ddp`` re-runs the script for
every rank) than inside pytest or a notebook, so tests of it write the script to a folder and run
it as a user would. The script prints one JSON line last; :func:`run_script` returns it parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def emit_json(obj: Any) -> None:
    """Print ``obj`` as one JSON line from inside a job script, in one ``os.write``: every rank of a
    ``ddp`` script shares stdout, and a write of under 4 kB to a pipe is never interleaved with
    another one (``print`` may split a line and let another rank's line land inside it)."""
    line = (json.dumps(obj) + "\n").encode()
    if len(line) >= 4096:
        raise ValueError(f"a job's JSON line must stay under 4 kB to be written atomically, got {len(line)}")
    os.write(1, line)


def run_script(code: str, folder: Path, *, name: str = "script.py", timeout: float = 300,
               env: dict[str, str] | None = None, args: list[str] | None = None,
               launcher: list[str] | None = None) -> Any:
    """Write ``code`` to ``folder/name``, run it with this interpreter, return its last JSON line.

    ``launcher`` replaces ``[python]`` (e.g. ``[python, "-m", "torch.distributed.run", ...]``).
    The repository is on ``PYTHONPATH`` (so ``tests.*`` helpers import); torch uses one thread.
    A non-zero exit raises ``AssertionError`` with the end of the job's output.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(textwrap.dedent(code))
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    cmd = [*(launcher or [sys.executable]), str(script), *(args or [])]
    proc = subprocess.run(cmd, cwd=folder, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith(("{", "["))]
    if not lines:
        raise AssertionError(f"{script} printed no JSON line\n--- stdout\n{proc.stdout[-3000:]}")
    return json.loads(lines[-1])
