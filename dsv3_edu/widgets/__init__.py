"""ipywidgets controls for the lessons: the callback logic lives here so tests can drive it."""
