"""Targets: the external systems metersync writes to (Stripe now, HubSpot later)."""
