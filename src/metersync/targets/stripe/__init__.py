"""Stripe: customers as a sync target.

`StripeTarget` syncs customers (the engine's Target) and holds the account every call of this
package goes through: one SDK client, one limiter of ordinary API calls.
"""

from metersync.targets.stripe._calls import default_rate
from metersync.targets.stripe._customers import StripeTarget

__all__ = ["StripeTarget", "default_rate"]
