import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_api_reference_builds_without_warnings(tmp_path):
    if shutil.which("sphinx-build") is None and not (Path(sys.executable).parent / "sphinx-build").exists():
        pytest.skip("sphinx is not installed")
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(REPO / "docs"), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "api.html").exists()


def test_every_public_module_is_in_the_api_reference():
    api = (REPO / "docs" / "api.rst").read_text()
    documented = {line.split("::", 1)[1].strip() for line in api.splitlines() if "automodule::" in line}
    package = REPO / "biomed_toolkit"
    missing = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if any(p.startswith("_") for p in parts) or len(parts) < 3 or path.name == "__init__.py":
            continue  # private modules, facades and packages: documented through their modules
        if ".".join(parts) not in documented:
            missing.append(".".join(parts))
    assert not missing, f"add these modules to docs/api.rst: {sorted(missing)}"
