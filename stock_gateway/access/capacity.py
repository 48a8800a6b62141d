"""Which symbols the gateway serves, who holds them, and who may add one more.

Finnhub's free plan carries about 50 symbols per socket, one socket per key; the
gateway serves every symbol wanted however many there are (market_data/feed_plan.py
decides which ride the socket: capacity is never a reason to refuse).
`UpstreamCapacity` keeps the wanted `SymbolInterest`, each symbol's demand
(`demand()`: its holders, weighted by owner) and decides:

- **a fair share** (`MAX_SYMBOLS_PER_ADDRESS`): one owner (a client address, or a user
  once users are known) is charged for the symbols it holds, a symbol that n owners
  hold costing each of them 1/n, and may not go over that many. The charges of all
  owners add up to the number of symbols held, so a party of k owners holds at most k
  shares whatever they do together (two addresses subscribing the same symbols in turn
  cannot fill the cap), while a popular symbol costs each of its holders little;
- **new symbols** (`NEW_SYMBOLS_PER_ADDRESS` an hour): one owner may make the upstream
  start carrying at most that many symbols it did not carry (nor let linger), a token
  bucket per owner (runtime/allowances.py). Every symbol carried is recorded in the bar
  store for months, so rotating through new symbols would otherwise grow the store
  without bound (docs/bars.md says what the bound costs); joining a symbol already
  carried is free;
- **the allow-list** (`SYMBOLS_ALLOWED`, optional): symbols or `fnmatch` patterns;
- **recent rejections**: a symbol Finnhub refused is released upstream at once and
  refused to everyone for `REJECTED_SYMBOL_SECONDS`;
- **linger** (`SYMBOL_LINGER_SECONDS`): when the last holder leaves, the symbol stays
  upstream a while, so a client that comes back (a page reload, a flapping dashboard)
  costs no upstream frame. A lingering symbol has no demand: the planner gives its
  socket slot to any symbol somebody holds.

The hub tells it every (symbol, owner) join and leave; all of it is synchronous code on
the event loop. It never talks to clients or to the upstream except through the interest.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from stock_gateway.access.entitlements import SymbolPatterns
from stock_gateway.access.refusal import Refusal
from stock_gateway.market_data.feed_plan import owner_weighted
from stock_gateway.market_data.model import SymbolInterest
from stock_gateway.runtime.allowances import Allowances

# Charges are sums of 1/n in floating point: a share filled exactly (say 10 halves and
# 5 whole symbols) must not be refused over a rounding error.
CHARGE_TOLERANCE = 1e-9
HOUR = 3600.0


class UpstreamCapacity:
    def __init__(
        self,
        interest: SymbolInterest,
        *,
        max_per_owner: int,
        new_per_owner_hour: int | None,
        allowed: SymbolPatterns | None = None,
        linger: float,
        reject_for: float,
        on_release: Callable[[str], None] = lambda symbol: None,
    ) -> None:
        self.interest = interest
        # Called with each symbol the upstream stops carrying: its snapshot and bars
        # would only go stale.
        self.on_release = on_release
        self._max_per_owner = max_per_owner
        self._new_per_owner_hour = new_per_owner_hour
        self._new_symbols = (
            None
            if new_per_owner_hour is None
            else Allowances(new_per_owner_hour / HOUR, new_per_owner_hour)
        )
        self._allowed = allowed
        self._linger = linger
        self._reject_for = reject_for
        self._holders: dict[str, Counter[str]] = {}  # symbol -> owner -> clients holding it
        self._held: dict[str, set[str]] = {}  # owner -> the symbols it holds
        self._lingering: dict[str, asyncio.TimerHandle] = {}  # insertion order: oldest first
        self._rejected: dict[str, float] = {}  # symbol -> loop time the refusal ends

    @property
    def lingering(self) -> list[str]:
        return sorted(self._lingering)

    def demand(self) -> dict[str, float]:
        """Each wanted symbol's demand: its holders weighted by owner (lingering: 0)."""
        weights = {symbol: owner_weighted(held) for symbol, held in self._holders.items()}
        weights.update(dict.fromkeys(self._lingering, 0.0))
        return weights

    def charge(self, owner: str) -> float:
        """What `owner`'s symbols use of its share: 1/n for each, n owners holding it.
        Computed when asked, so a join or leave costs O(1) however popular the symbol;
        an owner holds at most its clients' caps of symbols, so this is bounded too."""
        holders = self._holders
        return sum(1 / len(holders[symbol]) for symbol in self._held.get(owner, ()))

    def refusal(self, symbol: str, owner: str) -> Refusal | None:
        """Why `owner` may not become a holder of `symbol` now, or None."""
        if self._allowed is not None and symbol not in self._allowed:
            return Refusal(
                code="forbidden_symbol", reason="this gateway does not carry these symbols"
            )
        until = self._rejected.get(symbol)
        if until is not None:
            if asyncio.get_running_loop().time() < until:
                return Refusal(
                    code="upstream_error", reason="the upstream refused these symbols recently"
                )
            del self._rejected[symbol]
        holders = self._holders.get(symbol)
        if holders is not None and owner in holders:
            return None  # another client of the same owner: already paid for
        cost = 1 / (len(holders) + 1) if holders is not None else 1.0
        if self.charge(owner) + cost > self._max_per_owner + CHARGE_TOLERANCE:
            return Refusal(
                code="symbol_quota",
                reason=f"one address may hold at most {self._max_per_owner} symbols, a symbol "
                "that n addresses hold counting 1/n for each",
            )
        if holders is not None:
            return None  # carried already: sharing costs no upstream capacity
        if symbol not in self.interest and self._new_symbols is not None:
            wait = self._new_symbols.wait(owner, asyncio.get_running_loop().time())
            if wait:
                return Refusal(
                    code="symbol_quota",
                    reason=f"one address may make the gateway carry at most "
                    f"{self._new_per_owner_hour} new symbols an hour (symbols nobody follows); "
                    "try again later",
                    retry_after=max(1, round(wait)),
                )
        return None

    def join(self, symbol: str, owner: str) -> None:
        """A client of `owner` now holds `symbol` (after `refusal()` said yes)."""
        holders = self._holders.get(symbol)
        if holders is None:
            holders = self._holders[symbol] = Counter()
            timer = self._lingering.pop(symbol, None)
            if timer is not None:
                timer.cancel()  # back from lingering: already carried
            elif symbol not in self.interest:
                if self._new_symbols is not None:  # refusal() said there was one to spend
                    self._new_symbols.spend(owner, asyncio.get_running_loop().time(), 1)
                self.interest.want(symbol)
        if holders[owner] == 0:
            self._held.setdefault(owner, set()).add(symbol)
        holders[owner] += 1

    def leave(self, symbol: str, owner: str) -> None:
        holders = self._holders[symbol]
        holders[owner] -= 1
        if holders[owner] > 0:
            return
        del holders[owner]
        held = self._held[owner]
        held.discard(symbol)
        if not held:
            del self._held[owner]  # an owner with no symbol costs no memory
        if len(holders) == 0:
            del self._holders[symbol]
            if self._linger > 0 and symbol in self.interest:
                loop = asyncio.get_running_loop()
                self._lingering[symbol] = loop.call_later(self._linger, self._release, symbol)
            else:
                self._release(symbol)

    def rejected(self, symbol: str) -> None:
        """Finnhub refused `symbol`: refuse it for a while (holders are removed by the hub,
        and `leave()` must not let it linger)."""
        self._rejected[symbol] = asyncio.get_running_loop().time() + self._reject_for
        self._release(symbol)

    def _release(self, symbol: str) -> None:
        timer = self._lingering.pop(symbol, None)
        if timer is not None:
            timer.cancel()
        self.interest.release(symbol)
        self.on_release(symbol)

    def close(self) -> None:
        """Cancel the linger timers (the lifespan is ending)."""
        for timer in self._lingering.values():
            timer.cancel()
        self._lingering.clear()
