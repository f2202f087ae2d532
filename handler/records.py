"""The gateway's small records, written as plain classes.

A NamedTuple or a dataclass builds code when its class is made: `collections.namedtuple` compiles its `__new__`,
`typing.NamedTuple` also compiles each string annotation into a `ForwardRef`, and `@dataclass` compiles every
method it generates. On Lambda that happens at every cold start: about 0.9 million instructions for a NamedTuple of
five fields, 2 million for a dataclass's `__init__`, 4 million for a frozen record's methods (callgrind). A class
with `__slots__` and its own `__init__` is compiled with its module, into the bytecode the package ships, and
shares its equality, hash and repr with every other record through these bases.

- `Value`: an immutable value (what was a NamedTuple). Its fields are `Final`: mypy refuses any assignment after
  `__init__`. Equal to values of its own class with equal fields, hashable, `_replace` as a NamedTuple's.
- `Record` and `FrozenRecord`: the stored records that stay dataclasses for the protocol (orjson writes them,
  `dataclasses.replace` and `fields` work on them), declared `@dataclass(slots=True, init=False, eq=False,
  repr=False)` so that nothing is generated; `FrozenRecord` refuses assignment at run time, as a frozen dataclass.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any, Self


class Record:
    """Equality by value over the fields (with records of the same class only) and a repr naming them."""

    __slots__ = ()

    def _field_names(self) -> tuple[str, ...]:
        names: tuple[str, ...] = self.__slots__  # the subclass's: its fields, in order
        return names

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._field_names())

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._field_names())
        return f"{type(self).__qualname__}({fields})"


class Value(Record):
    """An immutable value (see the module docstring): hashable by its fields, copied with changes by `_replace`."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self._values())

    def _replace(self, **changes: Any) -> Self:
        """A copy with `changes` to some fields, as `NamedTuple._replace`."""
        return type(self)(**{name: getattr(self, name) for name in self._field_names()} | changes)


class FrozenRecord(Value):
    """A `Record` whose fields are set once, by `__init__` (through `object.__setattr__`), as a frozen dataclass's."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    # Copied and pickled as a frozen dataclass is: its fields set again through `object.__setattr__`.
    def __getstate__(self) -> tuple[object, ...]:
        return self._values()

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(self._field_names(), state, strict=True):
            object.__setattr__(self, name, value)
