"""ipywidgets controls for the lessons: the callback logic lives here so tests can drive it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as W

from ..viz import error_html


def explorer(
    controls: dict[str, W.ValueWidget],
    render: Callable[..., tuple[bytes, str]],
    columns: int = 1,
    errors: tuple[type[Exception], ...] = (ValueError,),
) -> W.VBox:
    """Controls over a picture and a table, redrawn whenever a control changes.

    ``render(**values)`` returns (PNG bytes, HTML) for the controls' current values, or raises
    ValueError for values that do not fit together: the message is shown instead of a traceback
    and the last good picture stays. The box exposes ``.controls``, ``.image``, ``.html`` and
    ``.redraw`` so tests can set a control's ``.value`` and see the output change, without a kernel.
    ``columns`` splits the controls into that many columns (the first ones get the extra control);
    ``errors`` are the exceptions shown as a message (a missing data file, say) rather than raised.
    """
    image, html = W.Image(format="png"), W.HTML()

    def redraw(_change: Any = None) -> None:
        try:
            png, text = render(**{name: c.value for name, c in controls.items()})
        except errors as err:
            html.value = error_html(str(err))
            return
        image.value, html.value = png, text

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    items = list(controls.values())
    per_column = -(-len(items) // columns)
    panel = W.HBox([W.VBox(items[i : i + per_column]) for i in range(0, len(items), per_column)])
    box = W.VBox([panel, image, html])
    box.controls, box.image, box.html, box.redraw = controls, image, html, redraw
    return box
