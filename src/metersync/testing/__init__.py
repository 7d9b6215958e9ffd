"""A Stripe emulator for tests: stateful, idempotent, fault-injecting, over real HTTP.

It is part of metersync's public API: use it to test your own billing code against the real
stripe-python SDK without a network.
"""

from metersync.testing._config import EmulatorConfig, FaultKind, FaultRule
from metersync.testing._webhooks import sign as sign_webhook
from metersync.testing.emulator import DEFAULT_TEST_KEY, StripeEmulator
from metersync.testing.hubspot import HubSpotEmulator
from metersync.testing.openmeter import OpenMeterEmulator

__all__ = [
    "DEFAULT_TEST_KEY",
    "EmulatorConfig",
    "FaultKind",
    "FaultRule",
    "HubSpotEmulator",
    "OpenMeterEmulator",
    "StripeEmulator",
    "sign_webhook",
]
