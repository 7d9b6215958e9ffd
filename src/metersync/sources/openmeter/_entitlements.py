"""Upstream entitlement figures as the CRM reads them: what `pull_entitlements` stored in
`upstream_entitlement`, in the shape of the render context (sync.ports.EntitlementSource)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from metersync.sources.openmeter._state import SOURCE
from metersync.store import Store
from metersync.store.upstream_entitlements import changed_customers, figures_of
from metersync.sync.ports import EntitlementFigures


class OpenMeterEntitlements:
    """OpenMeter's entitlement figures, as last pulled. Overage is stored, not shown: the
    render context carries access, balance, usage and the period's end."""

    def figures(
        self, store: Store, features: Sequence[str], keys: Sequence[str] | None
    ) -> dict[str, dict[str, EntitlementFigures]]:
        return {
            key: {
                feature: EntitlementFigures(
                    has_access=f.has_access,
                    balance=f.balance,
                    usage=f.usage,
                    period_end=f.period_end,
                )
                for feature, f in held.items()
            }
            for key, held in figures_of(store, SOURCE, features, keys).items()
        }

    def changed_customers(self, store: Store, features: Sequence[str], after: datetime) -> set[str]:
        return changed_customers(store, SOURCE, features, after)
