"""Operator roles and their ordering: each role may do everything the roles below it may."""

from __future__ import annotations

import enum

from control_plane.errors import InvalidRole


class Role(enum.Enum):
    """What an operator token may do: read (viewer), act on the fleet (operator), manage (admin)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Position in the ordering viewer < operator < admin."""
        return _RANK[self]

    @classmethod
    def parse(cls, name: str) -> Role:
        """The role called `name`, or `InvalidRole`."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(r.value for r in cls)
            raise InvalidRole(f"unknown role {name!r}; known: {known}") from None

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank >= other.rank


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def allows(role: Role, required: Role) -> bool:
    """Whether a token holding `role` may do something that needs `required`."""
    return role >= required
