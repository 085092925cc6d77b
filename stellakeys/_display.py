"""Where core value classes find their notebook renderer. Pure; no presentation code here.

The core's ``_repr_html_`` methods ask this registry; :mod:`stellakeys.notebook` (the edge)
fills it when imported. So the core never imports presentation code, and a process that never
imports the notebook module never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_RENDERERS: dict[type, Callable[[Any], str]] = {}


def register_html(kind: type, render: Callable[[Any], str]) -> None:
    _RENDERERS[kind] = render


def render_html(value: object) -> str | None:
    """The HTML of ``value`` from its registered renderer, or None (Jupyter then shows the
    plain repr)."""
    render = _RENDERERS.get(type(value))
    return render(value) if render is not None else None
