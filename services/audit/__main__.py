"""``python -m services.audit``: the audit service process."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from roost.audit.v1 import audit_service_pb2 as pb
from roost.audit.v1 import audit_service_pb2_grpc as pb_grpc
from services.audit.config import AuditConfig
from services.audit.log import AuditLog
from services.audit.servicer import LOG_SIZE, POLICY, AuditServicer
from services.kit.auth import Policy, Role
from services.kit.config import load_config
from services.kit.server import Registration, configure_process, run_service


def main() -> None:
    config = load_config(AuditConfig, "audit")
    configure_process(config.log_level)
    log: AuditLog | None = None

    async def build() -> tuple[Sequence[Registration], Policy]:
        nonlocal log
        log = await AuditLog.open(
            config.data_dir / config.db_name,
            max_group_records=config.max_group_records,
            max_pending_records=config.max_pending_records,
        )
        LOG_SIZE.set(await log.size())
        servicer = AuditServicer(log, config.max_append_batch)
        name = pb.DESCRIPTOR.services_by_name["AuditService"].full_name
        reg = Registration(name, lambda s: pb_grpc.add_AuditServiceServicer_to_server(servicer, s))
        return [reg], POLICY

    async def on_stop() -> None:
        if log is not None:
            await log.close()

    asyncio.run(run_service(config, Role.AUDIT, build, on_stop))


if __name__ == "__main__":
    main()
