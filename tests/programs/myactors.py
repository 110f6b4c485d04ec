"""Actors of the user's own program (imported by shop_driver.py; never installed on the nodes)."""
import disto
from myutils import Order, stamp


class OutOfStock(Exception):
    def __init__(self, item: str, wanted: int) -> None:
        super().__init__(f"only 3 of {item} left, {wanted} wanted")
        self.item = item
        self.wanted = wanted


class Counter(disto.Actor):
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def stamp(self, order: Order) -> Order:
        return stamp(order)

    def echo(self, x: object) -> object:
        return x


class Store(disto.Actor):
    def take(self, item: str, wanted: int) -> None:
        raise OutOfStock(item, wanted)


class Shop(disto.Actor):
    async def buy(self, store: disto.ActorRef, item: str, wanted: int) -> None:
        await store.take(item, wanted)
