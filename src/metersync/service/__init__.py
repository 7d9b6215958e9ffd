"""The service: `metersync run` (scheduled jobs under one leader per database)."""
