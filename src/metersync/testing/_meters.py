"""Filled in next."""

from metersync.testing._routes import Route


def routes() -> list[Route]:
    return []
