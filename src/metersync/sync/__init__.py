"""The sync engine: plan (pure) and apply (journaled), for any target."""
