"""Errors the libraries raise for a user to fix; each message names what, where and how to fix it.

The commands turn them into one `error: ...` line and exit status 2 (effnet_common.flagutil).
"""


class WeightsError(ValueError):
    """Backbone weights that cannot be had or do not fit; the message says how to fix it."""
