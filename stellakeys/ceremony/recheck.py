"""Re-verification of a ceremony's approvals at execution: moved to
:mod:`stellakeys.ceremony.rules` (kept so existing imports keep working)."""

from __future__ import annotations

from stellakeys.ceremony.rules import Discounted, Recheck, eligible_now, recheck_approvals

__all__ = ["Discounted", "Recheck", "eligible_now", "recheck_approvals"]
