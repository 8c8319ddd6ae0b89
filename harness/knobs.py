"""The one typed-setting type: a method's compression knob and a target's build option.

A knob has a name, a type, a valid range or a set of choices, a default, and (for methods) the
values a sweep takes when the user gives none. Text from the command line or a TOML file is
parsed once, before the first cell, into typed values; nothing downstream re-checks strings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from harness.errors import UserError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Knob:
    """One setting: its type, its valid range or choices, its default and its default sweep.

    ``default_sweep`` is for method knobs: the values a sweep takes when none are given; an empty
    one marks an alternative form of a budget (``macs=0.5`` instead of ``r=0.9``), swept only when
    given. ``default`` is the value used when the setting is not given at all (None: not set).
    """

    name: str
    kind: type  # float, int, str or bool
    default_sweep: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""
    default: Any = None
    quick_sweep: tuple[Any, ...] | None = None

    def sweep(self, preset: str) -> tuple[Any, ...]:
        """The values a sweep under ``preset`` takes when the user gives none."""
        return self.quick_sweep if preset == "quick" and self.quick_sweep is not None else self.default_sweep

    def parse(self, text: Any) -> Any:
        """The value of ``text`` (a string, or already a value) for this knob; UserError when
        malformed or out of range."""
        if isinstance(text, self.kind) and not (self.kind is int and isinstance(text, bool)):
            value = text
        elif self.kind is bool:
            low = str(text).strip().lower()
            if low not in _TRUE + _FALSE:
                raise UserError(f"{self.name}: {text!r} is not a boolean (true/false)")
            value = low in _TRUE
        else:
            try:
                value = self.kind(str(text).strip())
            except ValueError:
                raise UserError(f"{self.name}: {text!r} is not a {self.kind.__name__}") from None
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        if self.choices is not None and value not in self.choices:
            raise UserError(f"{self.name}: {value!r} not one of {', '.join(map(str, self.choices))}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise UserError(f"{self.name}={value} out of range [{self.low}, {self.high}]")

    def range_text(self) -> str:
        if self.choices:
            return "|".join(map(str, self.choices))
        if self.low is None and self.high is None:
            return self.kind.__name__
        return f"{self.kind.__name__} in [{self.low}, {self.high}]"

    def describe(self) -> str:
        """One line: ``name=range (default sweep ...)`` for methods, ``(default X)`` for options."""
        if self.default_sweep:
            tail = f"default sweep {','.join(map(str, self.default_sweep))}"
            if self.quick_sweep is not None and self.quick_sweep != self.default_sweep:
                tail += f"; quick {','.join(map(str, self.quick_sweep)) or 'none'}"
        elif self.default is not None:
            tail = f"default {self.default}"
        else:
            tail = "only when given"
        return f"{self.name}={self.range_text()} ({tail})"


def parse_settings(owner: str, knobs: tuple[Knob, ...], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values for every knob of ``owner``: the given ones parsed, the others at their
    default (knobs without a default are left out); an unknown name is a UserError."""
    by_name = {k.name: k for k in knobs}
    for name in raw:
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise UserError(f"{owner}: unknown option {name!r} (options: {known})")
    out = {k.name: k.default for k in knobs if k.default is not None}
    for name, value in raw.items():
        try:
            out[name] = by_name[name].parse(value)
        except UserError as exc:
            raise UserError(f"{owner}: {exc}") from None
    return out
