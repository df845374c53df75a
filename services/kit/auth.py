"""Roles and per-RPC authorization.

Every process holds a certificate from the hub's local CA whose subject common name
is its role. Servers authorize each RPC by the caller's role (from the verified mTLS
peer certificate) against a per-service policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Role(StrEnum):
    HUB = "hub"
    INFERENCE = "inference"
    AUDIT = "audit"
    UPDATE = "update"
    PERSONALIZATION = "personalization"
    # People: read-only auditors, and the hub's administrator (CLI).
    AUDITOR = "auditor"
    ADMIN = "admin"


SERVICE_ROLES = (Role.INFERENCE, Role.AUDIT, Role.UPDATE, Role.PERSONALIZATION)

# Any authenticated peer may ask for health and reflection.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Policy = Mapping[str, frozenset[Role]]
"""Full method name ('/pkg.Service/Method') -> roles allowed to call it."""


def role_from_common_name(common_name: str) -> Role | None:
    try:
        return Role(common_name)
    except ValueError:
        return None


def is_allowed(policy: Policy, method: str, role: Role | None) -> bool:
    if role is None:
        return False
    if method.startswith(OPEN_SERVICES):
        return True
    allowed = policy.get(method)
    return allowed is not None and role in allowed


def service_name(method: str) -> str:
    """'/roost.audit.v1.AuditService/QueryDecisions' -> 'AuditService'."""
    return method.lstrip("/").split("/", 1)[0].rsplit(".", 1)[-1]


def method_name(method: str) -> str:
    return method.rsplit("/", 1)[-1]
