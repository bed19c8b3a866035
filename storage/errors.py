"""Errors of the storage layer; transport exceptions never leave `storage`."""

from __future__ import annotations

from sensors.errors import SmartcityError


class StorageError(SmartcityError):
    """InfluxDB could not be reached, refused a request, or answered with an error."""


class StorageWriteError(StorageError):
    """A write was not acknowledged: retries are exhausted, or InfluxDB refused it as a whole (auth, database).

    `points` counts the points of the failed request(s) that InfluxDB did not
    confirm; rewriting them is harmless (a point's identity is series + time).
    """

    def __init__(self, message: str, points: int = 0) -> None:
        super().__init__(message)
        self.points = points


class QueryError(StorageError):
    """An InfluxQL query failed: bad statement, unknown database, or InfluxDB unreachable."""
