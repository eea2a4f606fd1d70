"""An endless weighted mixture of sources, deterministic for a seed and resumable to the exact example.

Step t draws its source from a generator seeded by (seed, t) alone, so the draw needs no history. Each
source keeps (epoch, position): a map-style source is read in a permutation seeded by (seed, source
index, epoch), a streaming one in its own order, and both start over at the end, epoch + 1. A state_dict
holds just these counters; on resume a streaming source is read again up to its position (the cost of
streams: no random access), a map-style one jumps there.
"""

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from vlm.data import DataError, Example, MapSource, Source


@dataclass(frozen=True)
class Draw:
    component: int  # index into Mixture.components
    item: "int | Example"  # a map-style source's index, or the example a stream yielded


@dataclass
class Component:
    name: str
    source: Source
    weight: float = 1.0  # its share of the examples drawn, relative to the other components
    loss_weight: float = 1.0  # multiplies the loss of its examples


class Mixture:
    """An iterator over the components' examples, each tagged with its component's name and loss weight.

    Iterate it from one place (state_dict describes what that iterator has yielded).
    """

    def __init__(self, components: Sequence[Component], *, seed: int = 0):
        if not components:
            raise ValueError("a mixture needs at least one component")
        names = [c.name for c in components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique, got {names}")
        for c in components:
            if not (math.isfinite(c.weight) and c.weight > 0) or not math.isfinite(c.loss_weight):
                raise ValueError(f"component {c.name!r}: weight must be finite and > 0 and loss_weight finite")
            if isinstance(c.source, MapSource) and len(c.source) == 0:
                raise DataError(f"component {c.name!r}: the source is empty")
        self.components, self.seed = list(components), seed
        total = sum(c.weight for c in components)
        self._cumulative = list(itertools.accumulate(c.weight / total for c in components))
        self._step = 0
        self._cursors = [[0, 0] for _ in components]  # [epoch, position] per component
        self._readers: list[Iterator[Example] | np.ndarray | None] = [None] * len(components)

    def __iter__(self) -> "Mixture":
        return self

    def __next__(self) -> Example:
        return self.materialize(self.draw())

    def draw(self) -> "Draw":
        """The next example's place, without loading it where the source allows (map-style: an index)."""
        u = np.random.default_rng([self.seed, self._step]).random()
        index = min(bisect.bisect_right(self._cumulative, u), len(self.components) - 1)
        source, cursor = self.components[index].source, self._cursors[index]
        if isinstance(source, MapSource):
            if cursor[1] == len(source):
                cursor[:] = [cursor[0] + 1, 0]
                self._readers[index] = None
            if self._readers[index] is None:
                self._readers[index] = np.random.default_rng([self.seed, index, cursor[0]]).permutation(len(source))
            item = int(self._readers[index][cursor[1]])
        else:  # a stream has no random access: its example is read here
            if self._readers[index] is None:  # first use, or resumed: skip what was read before
                self._readers[index] = itertools.islice(iter(source), cursor[1], None)
            item = next(self._readers[index], None)
            if item is None:  # end of a pass: start the next one
                cursor[:] = [cursor[0] + 1, 0]
                self._readers[index] = iter(source)
                item = next(self._readers[index], None)
                if item is None:
                    raise DataError(f"component {self.components[index].name!r}: the source yielded no examples")
        cursor[1] += 1
        self._step += 1
        return Draw(index, item)

    def materialize(self, draw: "Draw") -> Example:
        """The drawn example, tagged with its component. Costly for generated or decoded sources, so a
        data-loading worker process may do it for the process that drew."""
        component = self.components[draw.component]
        example = component.source[draw.item] if isinstance(draw.item, int) else draw.item
        return replace(example, source=component.name, loss_weight=component.loss_weight)

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "step": self._step,
            "sources": {c.name: {"epoch": e, "position": p} for c, (e, p) in zip(self.components, self._cursors)},
        }

    def load_state_dict(self, state: dict) -> None:
        names = [c.name for c in self.components]
        if state["seed"] != self.seed or list(state["sources"]) != names:
            raise ValueError(
                f"state is for seed {state['seed']} and components {list(state['sources'])}, "
                f"this mixture has seed {self.seed} and {names}"
            )
        self._step = state["step"]
        self._cursors = [[state["sources"][n]["epoch"], state["sources"][n]["position"]] for n in names]
        self._readers = [None] * len(self.components)
