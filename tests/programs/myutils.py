"""A helper module that myactors imports."""
from dataclasses import dataclass


@dataclass
class Order:
    item: str
    qty: int
    stamped: bool = False


def stamp(order: Order) -> Order:
    return Order(order.item, order.qty, True)
