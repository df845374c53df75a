"""The audit log as the chaos suite reads it: an auditor over gRPC (mTLS, QueryDecisions).

:class:`AuditView` remembers every entry it has read (``acknowledged``: id -> leaf
index). Before a kill it reads what was appended since its last read (newest first, down
to the highest index it already knows); after the restart it reads the newest entries
again, down to a given index, and names those acknowledged earlier that are missing or
moved. At the end :meth:`everything` reads the whole log, oldest first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence

from bench.chaos_ledger import Logged
from cli.stack import Stack
from roost.audit.v1 import audit_service_pb2 as audit_pb
from roost.audit.v1 import audit_service_pb2_grpc as audit_grpc
from services.kit.auth import Role
from services.kit.client import aio_channel

PAGE = 1000
# Per page; wait_for_ready: a just-restarted audit service may still be connecting.
PAGE_DEADLINE = 30.0


class AuditView:
    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self.acknowledged: dict[str, int] = {}
        self.top = -1  # the highest index read so far

    async def _pages(
        self, *, newest_first: bool
    ) -> AsyncGenerator[Sequence[audit_pb.LogEntry], None]:
        # A fresh channel per read: no reconnect backoff left over from an outage.
        channel = aio_channel(
            f"127.0.0.1:{self._stack.port_of(Role.AUDIT)}",
            certs_dir=self._stack.certs_dir,
            role=Role.AUDITOR,
            server_role=Role.AUDIT,
        )
        async with channel:
            stub = audit_grpc.AuditServiceStub(channel)
            token = ""
            while True:
                page = await stub.QueryDecisions(
                    audit_pb.QueryDecisionsRequest(
                        page_size=PAGE, page_token=token, newest_first=newest_first
                    ),
                    timeout=PAGE_DEADLINE,
                    wait_for_ready=True,
                )
                yield page.entries
                token = page.next_page_token
                if not token:
                    return

    async def _newest(self, down_to: int) -> dict[str, int]:
        """Entries with an index above ``down_to``: id -> index."""
        found: dict[str, int] = {}
        async with contextlib.aclosing(self._pages(newest_first=True)) as pages:
            async for entries in pages:
                for e in entries:
                    if e.index <= down_to:
                        return found
                    found[e.decision.decision_id] = e.index
        return found

    async def refresh(self) -> int:
        """Read what was appended since the last read; the number of entries known."""
        new = await self._newest(self.top)
        self.acknowledged.update(new)
        self.top = max([self.top, *new.values()])
        return len(self.acknowledged)

    async def missing_since(self, index: int) -> list[str]:
        """Entries read earlier with an index of at least ``index`` that the log no longer
        holds at that index."""
        now = await self._newest(index - 1)
        return [i for i, at in self.acknowledged.items() if at >= index and now.get(i) != at]

    async def everything(self) -> Mapping[str, Logged]:
        """The whole log: decision id -> (index, decided_at)."""
        log: dict[str, Logged] = {}
        async for entries in self._pages(newest_first=False):
            for e in entries:
                d = e.decision
                log[d.decision_id] = Logged(int(e.index), d.decided_at.ToMicroseconds() / 1e6)
        return log
