"""Roles and per-RPC authorization.

Every process holds a certificate from the hub's local CA whose subject common name
is its role. Servers authorize each RPC by the caller's role (from the verified mTLS
peer certificate) against a per-service policy. The methods a policy must cover come
from the service's generated descriptor (:func:`service_policy`): a service whose
``POLICY`` misses a method, or names one the service does not have, refuses to start.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from google.protobuf.descriptor import ServiceDescriptor


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


class PolicyError(ValueError):
    """A service's POLICY does not match its methods (the service refuses to start)."""


def service_policy(service: ServiceDescriptor, policy: Policy) -> Policy:
    """``policy`` for exactly the methods of ``service`` (from its generated descriptor).

    Raises :class:`PolicyError` naming every method of the service that has no entry,
    and every entry that names a method the service does not have.
    """
    prefix = f"/{service.full_name}/"
    methods = [prefix + m.name for m in service.methods]
    missing = [method_name(m) for m in methods if m not in policy]
    if missing:
        raise PolicyError(
            f"{service.full_name}: POLICY has no entry for {', '.join(missing)}"
            " (every RPC must name the roles allowed to call it)"
        )
    unknown = sorted(set(policy) - set(methods))
    if unknown:
        raise PolicyError(
            f"{service.full_name}: POLICY names {', '.join(unknown)},"
            " which the service does not have"
        )
    return MappingProxyType({m: policy[m] for m in methods})


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
