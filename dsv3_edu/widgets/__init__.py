"""ipywidgets controls for the lessons, one module per lesson: ``lNN_<slug>.py`` pairs with
``notebooks/NN_*.ipynb`` and ``dsv3_edu/exercises/lNN_<slug>.py``. A widget used by two lessons lives with
the lesson that introduces it. The callback logic lives here so tests can drive it; every formula it draws
comes from the core (``dsv3_edu.costmodel``, ``dsv3_edu.fp8``, ``dsv3_edu.evaluation``, ...), never from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as W

from ..viz import error_html, note_html


def explorer(
    controls: dict[str, W.ValueWidget],
    render: Callable[..., tuple[bytes, str]],
    columns: int = 1,
    errors: tuple[type[Exception], ...] = (ValueError,),
    requested: Mapping[str, Any] | None = None,
) -> W.VBox:
    """Controls over a picture and a table, redrawn whenever a control changes.

    ``render(**values)`` returns (PNG bytes, HTML) for the controls' current values, or raises
    ValueError for values that do not fit together: the message is shown instead of a traceback
    and the last good picture stays. The box exposes ``.controls``, ``.image``, ``.html`` and
    ``.redraw`` so tests can set a control's ``.value`` and see the output change, without a kernel.
    ``columns`` splits the controls into that many columns (the first ones get the extra control);
    ``errors`` are the exceptions shown as a message (a missing data file, say) rather than raised.
    ``requested``: the values the builder was asked for (see :func:`announce_clamps`).
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
    return announce_clamps(box, requested or {})


def announce_clamps(box: W.VBox, requested: Mapping[str, Any]) -> W.VBox:
    """Say so when a control could not start at the value asked for: a slider clamps a value beyond its range
    (``n_heads=1000`` on a 1..256 slider starts at 256) without a word. Each such control is named above the
    first drawing, with the value it starts at; ``box.clamped`` maps its name to (asked, used)."""
    box.clamped = {name: (value, box.controls[name].value) for name, value in requested.items()
                   if name in box.controls and value is not None and box.controls[name].value != value}
    if box.clamped:
        box.html.value = note_html("; ".join(
            f"{name}={asked!r} is outside the control's range, so it starts at {used!r}"
            for name, (asked, used) in box.clamped.items())) + box.html.value
    return box
