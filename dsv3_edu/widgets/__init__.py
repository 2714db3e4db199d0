"""ipywidgets controls for the lessons, one module per lesson: ``lNN_<slug>.py`` pairs with
``notebooks/NN_*.ipynb`` and ``dsv3_edu/exercises/lNN_<slug>.py``. A widget used by two lessons lives with
the lesson that introduces it. The callback logic lives here so tests can drive it; every formula it draws
comes from the core (``dsv3_edu.costmodel``, ``dsv3_edu.fp8``, ``dsv3_edu.evaluation``, ...), never from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as W

from ..viz import error_html, note_html


def explorer(
    controls: dict[str, W.DOMWidget],
    render: Callable[..., tuple[bytes | None, str]],
    columns: int = 1,
    errors: tuple[type[Exception], ...] = (ValueError,),
    requested: Mapping[str, Any] | None = None,
    rows: Sequence[Sequence[str]] | None = None,
    layout: str = "stacked",
    before: Mapping[str, Callable[[Any], bool | None]] | None = None,
    buttons: Mapping[str, Callable[[], None]] | None = None,
    adjust: Callable[..., Mapping[str, tuple[Any, str]]] | None = None,
) -> W.VBox:
    """Controls over a picture and a table, redrawn whenever a control changes: every lesson's widget.

    ``render(**values)`` gets the value of every control that has one (buttons have none) and returns
    (PNG bytes or None to keep the picture, HTML); it raises ValueError for values that do not fit together:
    the message is shown instead of a traceback and the last good picture stays. The box exposes
    ``.controls``, ``.image``, ``.html`` and ``.redraw`` so tests can set a control's ``.value`` (or call
    ``.click()`` on a button; ``.actions[name]()`` is the same click) and see the output change, without a kernel.

    Layout: ``columns`` splits the controls into that many columns; ``rows`` (lists of control names, one
    HBox each) places them instead. ``layout``: "stacked" (controls, picture, table), "side" (the picture
    and the table side by side) or "html_first" (the table above the picture).
    ``errors``: the exceptions shown as a message (a missing data file, say) rather than raised.
    ``requested``: the values the builder was asked for (see :func:`announce_clamps`).
    ``before[name](change)`` runs when control ``name`` changes, before the redraw (to keep dependent controls
    valid, say); it returns False when no redraw is needed. Changes it makes to other controls redraw once,
    at its end. ``buttons[name]()`` runs when button ``name`` is clicked, then the widget redraws.
    ``adjust(**values)`` keeps dependent controls valid: before every drawing it returns {name: (value, why)}
    for each control that must move (kept groups above the number of groups, say); the control is moved and
    a note above the output says so, e.g. "topk_group 4 -> 2: a token cannot keep more groups than there are".
    """
    if layout not in ("stacked", "side", "html_first"):
        raise ValueError(f"layout={layout!r}: use 'stacked', 'side' or 'html_first'")
    image, html = W.Image(format="png"), W.HTML()
    state = {"quiet": False}

    def redraw(_change: Any = None) -> None:
        if state["quiet"]:
            return
        values = {name: c.value for name, c in controls.items() if hasattr(c, "value")}
        notes = []
        for name, (value, why) in (adjust(**values) if adjust else {}).items():
            notes.append(f"{name} {values[name]!r} -> {value!r}: {why}")
            state["quiet"] = True
            try:
                controls[name].value = value
            finally:
                state["quiet"] = False
            values[name] = controls[name].value
        note = note_html("; ".join(notes)) if notes else ""
        try:
            png, text = render(**values)
        except errors as err:
            html.value = note + error_html(str(err))
            return
        if png is not None:
            image.value = png
        html.value = note + text

    def changed(name: str) -> Callable[[Any], None]:
        def handler(change: Any) -> None:
            if state["quiet"]:
                return
            hook = (before or {}).get(name)
            if hook is not None:
                state["quiet"] = True
                try:
                    again = hook(change)
                finally:
                    state["quiet"] = False
                if again is False:
                    return
            redraw()
        return handler

    def clicked(action: Callable[[], None]) -> Callable[[Any], None]:
        def handler(_button: Any = None) -> None:
            try:
                action()
            except errors as err:
                html.value = error_html(str(err))
                return
            redraw()
        return handler

    actions = {name: clicked(action) for name, action in (buttons or {}).items()}
    for name, control in controls.items():
        if name in actions:
            control.on_click(actions[name])
        elif hasattr(control, "value"):
            control.observe(changed(name), names="value")
    redraw()
    if rows is not None:
        panel = W.VBox([W.HBox([controls[name] for name in row]) for row in rows])
    else:
        items = list(controls.values())
        per_column = -(-len(items) // columns)
        panel = W.HBox([W.VBox(items[i : i + per_column]) for i in range(0, len(items), per_column)])
    if layout == "side":
        box = W.VBox([panel, W.HBox([image, html])])
    elif layout == "html_first":
        box = W.VBox([panel, html, image])
    else:
        box = W.VBox([panel, image, html])
    box.controls, box.image, box.html, box.redraw, box.actions = controls, image, html, redraw, actions
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
