"""Shared by the widget tests: drive an explorer's controls as a learner would, without a kernel."""


def assert_redraws(box, changes, image: bool = True) -> None:
    """Set each control in turn (``changes``: a dict or (name, value) pairs); every change must redraw the table
    (and, with ``image``, the picture) and draw no error message."""
    for name, value in (changes.items() if isinstance(changes, dict) else changes):
        before_image, before_html = box.image.value, box.html.value
        box.controls[name].value = value
        assert "Not drawn" not in box.html.value, (name, box.html.value)
        assert box.html.value != before_html, name
        if image:
            assert box.image.value != before_image, name


def assert_refused(box, name: str, value, *fragments: str) -> None:
    """Setting a bad value shows a message naming what is wrong (``fragments``) and keeps the last good picture."""
    picture = box.image.value
    box.controls[name].value = value
    assert "Not drawn" in box.html.value, (name, value)
    for fragment in fragments:
        assert fragment in box.html.value, (fragment, box.html.value)
    assert box.image.value == picture  # the last valid picture stays
