"""Progress bars that work in notebooks and terminals and honour ``bt.settings.progress``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str | None = None,
    *,
    enabled: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Wrap ``iterable`` in ``tqdm.auto.tqdm`` unless progress bars are switched off.

    Examples
    --------
    >>> for _ in progress(range(3), desc="cells", enabled=False):
    ...     pass
    """
    from tqdm.auto import tqdm

    from .settings import settings

    show = settings.progress if enabled is None else enabled
    return tqdm(iterable, total=total, desc=desc, disable=not show, leave=False, **kwargs)
