"""The one exception type every layer raises for a problem the user can fix.

`sensors` is the bottom of the dependency graph, so the base class lives here and
`storage`, `ingest`, `pipelines`, `dashboards` and `deploy` subclass it. The
command line turns any `SmartcityError` into a one-line message and exit 1.
"""


class SmartcityError(Exception):
    """A failure with a message fit to show a user as is (no traceback)."""
