"""Typed configs as plain dicts: what checkpoints and config.json store, and how they come back."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

C = TypeVar("C", bound="DictConfig")


def check_field_names(cls: type, names) -> None:
    """ValueError naming any of ``names`` that is not a field of the dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid fields are {sorted(known)}")


class DictConfig:
    """Mixin for config dataclasses: ``to_dict()`` and a ``from_dict()`` that refuses unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        check_field_names(cls, data)
        return cls(**data)
