"""``idruid ui``: a layout editor in the browser (draw boxes, caption them, generate).

``requests`` checks a submitted layout and maps LayoutError messages back to boxes, ``jobs``
runs generation off the request thread with step-k-of-n progress, ``server`` is the Flask app,
``static/`` the hand-written page. Only ``server`` needs Flask (the ``ui`` extra).
"""

from __future__ import annotations

UI_EXTRA_HINT = "idruid ui needs Flask, which the core install leaves out: pip install 'idruid[ui]'"


class UIUnavailable(RuntimeError):
    """The ``ui`` extra is not installed."""
