"""Rows to records: the one place the entitlement tables' columns are read."""

from __future__ import annotations

from decimal import Decimal

from metersync.entitlements._model import (
    Entitlement,
    EntitlementGrant,
    Expiration,
    Feature,
    Issue,
    Kind,
    UsageReset,
)
from metersync.entitlements._periods import UsagePeriod
from metersync.store import EntitlementResetRow, EntitlementRow, FeatureRow, GrantRow


def feature_of(row: FeatureRow) -> Feature:
    return Feature(
        id=row.id,
        key=row.key,
        name=row.name,
        meter_slug=row.meter_slug,
        group_filters=dict(row.group_filters),
        metadata=dict(row.meta),
        created_at=row.created_at,
        updated_at=row.updated_at,
        archived_at=row.archived_at,
    )


def entitlement_of(row: EntitlementRow, customer_id: str) -> Entitlement:
    period = None
    if row.usage_interval is not None and row.usage_anchor is not None:
        period = UsagePeriod.of(row.usage_interval, row.usage_anchor)
    issue = None
    if row.issue_amount is not None:
        issue = Issue(Decimal(row.issue_amount), row.issue_priority or 1)
    return Entitlement(
        id=row.id,
        kind=Kind(row.kind),
        customer_id=customer_id,
        customer_key=row.customer_key,
        feature_id=row.feature_id,
        feature_key=row.feature_key,
        created_at=row.created_at,
        updated_at=row.updated_at,
        metadata=dict(row.meta),
        usage_period=period,
        measure_usage_from=row.measure_usage_from,
        is_soft_limit=row.is_soft_limit,
        preserve_overage_at_reset=row.preserve_overage_at_reset,
        issue=issue,
        config=row.config,
        deleted_at=row.deleted_at,
    )


def grant_of(row: GrantRow) -> EntitlementGrant:
    expiration = None
    if row.expiration_duration is not None and row.expiration_count is not None:
        expiration = Expiration(row.expiration_duration, row.expiration_count)
    recurrence = None
    if row.recurrence_interval is not None:
        recurrence = UsagePeriod.of(
            row.recurrence_interval, row.recurrence_anchor or row.effective_at
        )
    return EntitlementGrant(
        id=row.id,
        entitlement_id=row.entitlement_id,
        amount=Decimal(row.amount),
        priority=row.priority,
        effective_at=row.effective_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        min_rollover=Decimal(row.min_rollover),
        max_rollover=None if row.max_rollover is None else Decimal(row.max_rollover),
        expiration=expiration,
        expires_at=row.expires_at,
        recurrence=recurrence,
        metadata=dict(row.meta),
        voided_at=row.voided_at,
    )


def reset_of(row: EntitlementResetRow) -> UsageReset:
    return UsageReset(
        id=row.id,
        entitlement_id=row.entitlement_id,
        at=row.reset_at,
        preserve_overage=row.preserve_overage,
        retain_anchor=row.retain_anchor,
        created_at=row.created_at,
    )
