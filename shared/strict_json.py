"""Reading signed JSON documents field by field, refusing anything unexpected.

A `JsonFields` wraps one JSON object. Each accessor takes a field, checks its type (a bool is
never an integer, a float is never NaN) and marks it as read; `finish()` then refuses fields
nobody read, so a document with a typo or a field from a newer format fails loudly instead of
being half-understood. Every error names the field by its path (`manifest.files[2].sha256`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import partial
from typing import NoReturn

from shared.canonical import parse_json
from shared.trust_errors import MalformedDocument, TrustError

HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class JsonFields:
    """One JSON object of a document, read with type checks; errors name the field's path."""

    def __init__(
        self, value: object, where: str, error: type[TrustError] = MalformedDocument
    ) -> None:
        self._where = where
        self._error = error
        if not isinstance(value, dict):
            raise error(f"{where}: expected an object, found {_kind(value)}")
        self._data: dict[str, object] = value
        self._read: set[str] = set()

    @classmethod
    def parse(
        cls, data: bytes, where: str, error: type[TrustError] = MalformedDocument
    ) -> JsonFields:
        """Parse JSON bytes strictly and wrap the top-level object."""
        try:
            value = parse_json(data)
        except ValueError as exc:
            raise error(f"{where}: {exc}") from None
        return cls(value, where, error)

    @property
    def raw(self) -> dict[str, object]:
        """The object as parsed (for recomputing canonical bytes)."""
        return self._data

    def path(self, key: str) -> str:
        """The path of a field, as errors name it."""
        return f"{self._where}.{key}"

    def value(self, key: str) -> object:
        """A field of any type, unchecked (for readers that check it themselves)."""
        return self._get(key)

    def fail(self, key: str, reason: str) -> NoReturn:
        """Raise the document's error for `key`."""
        raise self._error(f"{self.path(key)}: {reason}")

    def _get(self, key: str) -> object:
        if key not in self._data:
            self.fail(key, "missing")
        self._read.add(key)
        return self._data[key]

    def text(self, key: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        """A string (non-empty; matching `pattern` in full when given, described by `what`)."""
        value = self._get(key)
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string, found {_kind(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(key, f"expected {what or pattern.pattern}, found {value!r}")
        return value

    def integer(self, key: str, minimum: int | None = None) -> int:
        """An integer (not a bool), at least `minimum` when given."""
        return _integer(self._get(key), minimum, lambda reason: self.fail(key, reason))

    def number(self, key: str, minimum: float | None = None) -> float:
        """A finite number (int or float, not a bool), at least `minimum` when given."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number, found {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            self.fail(key, "expected a finite number, found an integer too large for a float")
        if not math.isfinite(number) or (minimum is not None and number < minimum):
            self.fail(key, f"expected a finite number >= {minimum}, found {value}")
        return number

    def child(self, key: str) -> JsonFields:
        """A nested object."""
        return JsonFields(self._get(key), self.path(key), self._error)

    def children(self, key: str) -> list[JsonFields]:
        """A list of objects."""
        items = self._list(key)
        return [JsonFields(v, f"{self.path(key)}[{i}]", self._error) for i, v in enumerate(items)]

    def texts(self, key: str) -> tuple[str, ...]:
        """A list of non-empty strings."""
        items = self._list(key)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                self.fail(f"{key}[{i}]", f"expected a non-empty string, found {_kind(item)}")
        return tuple(str(item) for item in items)

    def integers(self, key: str, minimum: int | None = None) -> tuple[int, ...]:
        """A list of integers, each at least `minimum` when given."""
        result = []
        for i, item in enumerate(self._list(key)):
            result.append(_integer(item, minimum, partial(self.fail, f"{key}[{i}]")))
        return tuple(result)

    def text_map(self, key: str) -> dict[str, str]:
        """An object whose values are non-empty strings."""
        fields = self.child(key)
        return {name: fields.text(name) for name in fields.names()}

    def texts_map(self, key: str) -> dict[str, tuple[str, ...]]:
        """An object whose values are lists of non-empty strings."""
        fields = self.child(key)
        return {name: fields.texts(name) for name in fields.names()}

    def names(self) -> list[str]:
        """Every field name, sorted."""
        return sorted(self._data)

    def finish(self) -> None:
        """Refuse any field that was not read."""
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            self.fail(unknown[0], "unknown field")

    def values(self, key: str) -> list[object]:
        """A list of values of any type, unchecked."""
        return self._list(key)

    def _list(self, key: str) -> list[object]:
        value = self._get(key)
        if not isinstance(value, list):
            self.fail(key, f"expected a list, found {_kind(value)}")
        return value


def _integer(value: object, minimum: int | None, fail: Callable[[str], NoReturn]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"expected an integer, found {_kind(value)}")
    if minimum is not None and value < minimum:
        fail(f"expected an integer >= {minimum}, found {value}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__
