"""Symbol -> clients: who gets each symbol's price updates, and who of them one by one.

The hub (hub.py) owns one `Subscribers` and reads its two maps on the hot path
directly; every change goes through these methods, so the maps never disagree with
each other: a client is in `immediate` for a symbol exactly while it is subscribed to
it and takes price updates one by one (`ClientConnection.immediate`); paced clients
get them through their delivery group, raw trades through their trade group. Plain
bookkeeping on the event loop: it never sends anything and never asks the holds.
"""

from __future__ import annotations

from stock_gateway.delivery.outbox import ClientConnection


class Subscribers:
    """Each symbol's subscribers, and the immediate ones among them."""

    def __init__(self) -> None:
        self.of_symbol: dict[str, set[ClientConnection]] = {}
        self.immediate: dict[str, set[ClientConnection]] = {}

    def of(self, symbol: str) -> frozenset[ClientConnection]:
        return frozenset(self.of_symbol.get(symbol, ()))

    def add(self, client: ClientConnection, symbol: str) -> None:
        self.of_symbol.setdefault(symbol, set()).add(client)
        if client.immediate:
            self.immediate.setdefault(symbol, set()).add(client)

    def remove(self, client: ClientConnection, symbol: str) -> None:
        _discard(self.of_symbol, symbol, client)
        _discard(self.immediate, symbol, client)

    def served_anew(self, client: ClientConnection, was_immediate: bool) -> None:
        """The client's delivery options changed: from one by one to its group, or back."""
        if client.immediate == was_immediate:
            return
        for symbol in client.symbols:
            if was_immediate:
                _discard(self.immediate, symbol, client)
            else:
                self.immediate.setdefault(symbol, set()).add(client)


def _discard(
    clients_of: dict[str, set[ClientConnection]], symbol: str, client: ClientConnection
) -> None:
    clients = clients_of.get(symbol)
    if clients is not None:
        clients.discard(client)
        if not clients:  # no empty sets left behind: the keys are what is held
            del clients_of[symbol]
