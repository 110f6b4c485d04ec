"""Actors: the base class, refs (picklable, with futures back), the ordered mailbox, and the current-node
context that refs resolve through. Knows nothing of nodes beyond that context."""
from .base import LIFECYCLE_HOOKS, Actor, check_actor_class, on_loop, public_methods, runs_on_loop
from .context import current_node
from .group import ActorGroup, GroupMethod
from .mailbox import CallItem, Mailbox, describe_exception
from .ref import FIRST_USER_ACTOR_ID, ActorRef, MethodRef, SystemActor, system_ref
from .threads import ActorThread

__all__ = ["LIFECYCLE_HOOKS", "Actor", "ActorGroup", "GroupMethod", "ActorThread", "check_actor_class", "on_loop", "public_methods", "runs_on_loop",
           "current_node", "CallItem",
           "Mailbox", "describe_exception", "FIRST_USER_ACTOR_ID", "ActorRef", "MethodRef", "SystemActor",
           "system_ref"]
