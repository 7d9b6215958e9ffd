"""Sources: systems metersync pulls its catalog and usage from, instead of being told."""
