"""metersync: keeps Stripe (and a CRM) in step with a metering catalog."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # `__version__` is looked up on first use, not at import: importlib.metadata costs tens of
    # milliseconds, and every `metersync` command imports this package (only --version needs it).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("metersync")
        except PackageNotFoundError:  # running from a source tree that was never installed
            found = "0+unknown"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
