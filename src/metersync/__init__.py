"""metersync: keeps Stripe (and a CRM) in step with a metering catalog."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metersync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
