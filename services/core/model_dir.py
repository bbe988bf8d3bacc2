"""Which model a request may name."""

from __future__ import annotations

from editloop.quote import quoted
from services.core.errors import NotFound


def check_model_ref(name: str, version: str, served_name: str, served_version: str) -> None:
    """A request may name the served model and version, or leave them empty; anything else is NOT_FOUND."""
    if name and name != served_name:
        raise NotFound(f"`model.name` {quoted(name)} is not served here (this server has {served_name!r})")
    if version and version != served_version:
        raise NotFound(f"`model.version` {quoted(version)} is not served (serving {served_version!r})")
