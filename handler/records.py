"""The gateway's small records, written as plain classes.

A NamedTuple or a dataclass builds code when its class is made: `collections.namedtuple` compiles its `__new__`,
`typing.NamedTuple` also compiles each string annotation into a `ForwardRef`, and `@dataclass` compiles every
method it generates. On Lambda that happens at every cold start: about 0.9 million instructions for a NamedTuple of
five fields, 2 million for a dataclass's `__init__`, 4 million for a frozen record's methods (callgrind). A class
with `__slots__` and its own `__init__` is compiled with its module, into the bytecode the package ships, and
shares its equality, hash and repr with every other record through these bases.

- `Value`: an immutable value (what was a NamedTuple). Its fields are `Final`: mypy refuses any assignment after
  `__init__`. Equal to values of its own class with equal fields, hashable, `_replace` as a NamedTuple's.
- `Record` and `FrozenRecord`: the stored records, which stay dataclasses for the protocol (orjson writes them,
  `dataclasses.replace`, `fields` and `asdict` work on them): each declares its fields in `__slots__` and is made
  one by `stored`, which gives it the fields' table and nothing else; `FrozenRecord` refuses assignment at run time,
  as a frozen dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import FrozenInstanceError
from typing import Any, ClassVar, Self, TypeVar


class Record:
    """Equality by value over the fields (with records of the same class only) and a repr naming them."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # (a stored record's: `stored`)

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


R = TypeVar("R", bound=Record)
# What marks a dataclass field as one (not a class or init-only variable): `dataclasses.fields` reads no other.
FIELD = dataclasses._FIELD  # type: ignore[attr-defined]


def stored(cls: type[R]) -> type[R]:
    """`cls`, a record whose fields are its `__slots__`, each annotated, made a dataclass as far as its readers go:
    its table of fields (`__dataclass_fields__`), in their order, by which orjson writes it and `dataclasses.fields`,
    `replace` and `asdict` read it; its slots and its annotations must name the same fields in the same order. Nothing
    else of `@dataclass` is made: even with no method generated, its processing of a class (every annotation looked
    through, the class made again for its slots) cost a Lambda cold start 4.3 million instructions for the six stored
    records, 1.3 million for the ledger item alone (callgrind)."""
    names: tuple[str, ...] = cls.__slots__
    annotations = cls.__annotations__
    if tuple(annotations) != names:  # (one list written twice: a field left out of either is no field of the table)
        raise TypeError(f"{cls.__name__}: __slots__ {names} are not its annotated fields {tuple(annotations)}")
    table: dict[str, dataclasses.Field[Any]] = {}
    for name in names:
        field: dataclasses.Field[Any] = dataclasses.field()
        field.name, field.type = name, annotations[name]
        field._field_type = FIELD  # type: ignore[attr-defined]
        table[name] = field
    cls.__dataclass_fields__ = table
    return cls
