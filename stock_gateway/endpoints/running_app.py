"""What the HTTP endpoints read of the running app: a protocol, so they depend on the
parts they use and never on wiring.py, which builds those parts (and the endpoints'
sessions) and would otherwise be imported back from below. `wiring.Running` is the one
implementation."""

from __future__ import annotations

from typing import Protocol

from hub import Hub
from stock_gateway.access.admission import Admission
from stock_gateway.market_data.planned_upstream import PlannedUpstream
from stock_gateway.market_data.provider import ProviderRest
from stock_gateway.market_data.rest_mirror import RestMirror
from stock_gateway.runtime.supervisor import Supervisor


class RunningApp(Protocol):
    @property
    def hub(self) -> Hub: ...

    @property
    def upstream(self) -> PlannedUpstream: ...

    @property
    def rest(self) -> ProviderRest: ...

    @property
    def mirror(self) -> RestMirror: ...

    @property
    def supervisor(self) -> Supervisor: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def started_at(self) -> float: ...

    def cluster_health(self) -> dict[str, object]:
        """The cluster's part of /health (nothing in a single process)."""
        ...
