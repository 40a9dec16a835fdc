"""
Per-node sequence numbers: duplicate suppression and loss counting, for
every transport whose uploads name their node (``Upload.node``).

A node is the sender the transport names (``udp:10.0.0.7``, a serial
device and its gateway prefix) together with the upload's box column
(``OSEM_BOX_COL``), so boxes behind one address keep numbers of their own.

A node that retries an upload (because its acknowledgement got lost) sends
the same sequence number again; the retry is not stored twice.  Gaps in the
numbers count as lost uploads, and a number that arrives late takes one off
the loss count again.  A number far below the highest one seen (more than
``window`` below) means the node restarted its numbering.

A number counts as seen once its upload is stored; a repeat that arrives
while the first is still being stored is a duplicate too.  Numbers are
remembered for ``memory_seconds``, so a node that reboots and starts again
at 0 is not mistaken for a retry once that time has passed.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Protocol, Set, Tuple



class Clock(Protocol):
    """What is read of a clock: a reactor, or ``task.Clock`` in tests."""

    def seconds(self) -> float:
        """Now, in seconds since the epoch."""


NEW = "new"
DUPLICATE = "duplicate"
IN_FLIGHT = "in-flight"


class NodeSequence:
    """What is known about one node's numbers."""

    __slots__ = ("last", "recent", "in_flight", "stored", "duplicates", "lost", "restarts")

    def __init__(self) -> None:
        self.last: Optional[int] = None
        self.recent: "collections.OrderedDict[int, float]" = collections.OrderedDict()
        self.in_flight: Set[int] = set()
        self.stored = 0
        self.duplicates = 0
        self.lost = 0
        self.restarts = 0

    def as_dict(self) -> Dict[str, Any]:
        """Plain data for /metrics."""
        return {
            "last": self.last,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "restarts": self.restarts,
        }


class SequenceTracker:
    """Sequence state per node, bounded to ``max_nodes`` nodes (least recently used go)."""

    def __init__(self, clock: Clock, window: int = 64, memory_seconds: float = 600.0, max_nodes: int = 4096):
        self.clock = clock
        self.window = window
        self.memory_seconds = memory_seconds
        self.max_nodes = max_nodes
        self.nodes: "collections.OrderedDict[Hashable, NodeSequence]" = collections.OrderedDict()

    def _node(self, node: Hashable) -> NodeSequence:
        state = self.nodes.get(node)
        if state is None:
            if len(self.nodes) >= self.max_nodes:
                self.nodes.popitem(last=False)
            state = self.nodes[node] = NodeSequence()
        else:
            self.nodes.move_to_end(node)
        return state

    def begin(self, node: Hashable, seq: int) -> str:
        """
        :data:`NEW` (go on, store it, then call :meth:`done`), :data:`DUPLICATE`
        (stored before) or :data:`IN_FLIGHT` (the same number is being stored now).
        """
        state = self._node(node)
        self._expire(state)
        if seq in state.in_flight:
            state.duplicates += 1
            return IN_FLIGHT
        if seq in state.recent:
            state.duplicates += 1
            return DUPLICATE
        state.in_flight.add(seq)
        return NEW

    def done(self, node: Hashable, seq: int, stored: bool) -> None:
        """The upload numbered ``seq`` was stored (or failed: then a retry is welcome)."""
        state = self._node(node)
        state.in_flight.discard(seq)
        if not stored:
            return
        state.stored += 1
        if state.last is None:
            state.last = seq
        elif seq > state.last:
            if seq - state.last > self.window * 1024:
                state.restarts += 1  # a jump this far is a new numbering, not a loss
            else:
                state.lost += seq - state.last - 1
            state.last = seq
        elif state.last - seq > self.window:
            state.restarts += 1
            state.last = seq
            state.recent.clear()
        else:
            state.lost = max(0, state.lost - 1)  # a late arrival, counted lost before
        state.recent[seq] = self.clock.seconds()
        while len(state.recent) > self.window:
            state.recent.popitem(last=False)

    def _expire(self, state: NodeSequence) -> None:
        horizon = self.clock.seconds() - self.memory_seconds
        while state.recent:
            seq, when = next(iter(state.recent.items()))
            if when >= horizon:
                break
            state.recent.popitem(last=False)

    def as_dict(self, which: Optional[Callable[[Hashable], bool]] = None) -> Dict[str, Dict[str, Any]]:
        """Node → its counters; only the nodes ``which`` accepts, when given."""
        return {str(node): state.as_dict() for node, state in self.nodes.items() if which is None or which(node)}


def numbered_node(
    table: Mapping[Any, List[Any]], field: str, sender: Hashable, box_column: str
) -> Optional[Tuple[Tuple[Hashable, Any], int]]:
    """
    ``((sender, box), number)`` for an upload that carries the sequence
    column ``field``; None for one that does not.  ``box`` is the first
    value of ``box_column`` (or None).
    """
    seq = sequence_number(table, field)
    if seq is None:
        return None
    box = next((values[0] for name, values in table.items() if _lower(name) == box_column and values), None)
    return (sender, box), seq


def _lower(name: Any) -> Any:
    return name.lower() if isinstance(name, str) else name


def sequence_number(table: Mapping[Any, List[Any]], field: str) -> Optional[int]:
    """The first value of the sequence column as a whole number, or None."""
    for name, values in table.items():
        if isinstance(name, str) and name.lower() == field:
            for value in values:
                if isinstance(value, bool) or value is None:
                    continue
                if isinstance(value, int):
                    return value
                if isinstance(value, float) and value.is_integer():
                    return int(value)
                if isinstance(value, str) and value.strip().isdigit():
                    return int(value.strip())
                return None
    return None
