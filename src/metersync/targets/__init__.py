"""Targets: the external systems metersync writes to (Stripe: customers and billing meters;
HubSpot: companies and their contacts)."""
