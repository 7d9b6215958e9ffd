"""Harnesses that drive the product against the emulators (metersync.testing) under faults and
SIGKILLs, and check what it left behind: for the crash tests and the chaos benchmarks.

They use the whole product, so they live apart from the emulators, which import nothing of
it; nothing in the product imports them (both are import-linter contracts in pyproject.toml).
"""
