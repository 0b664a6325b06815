"""``Arch``: one hybrid architecture as a value, with a canonical string and a stable hash.

Canonical string, groups in the order data flows::

    enc:T,M,E|lat:M|dec:E,M,T|ref:E

``enc`` lists enc1, enc2, enc3; ``dec`` lists dec3, dec2, dec1 (deepest first). Each level is
either one letter (every block of the level has that kind: per-stage granularity) or one letter
per block (``enc:TM,M,E``: per-block granularity). A level whose blocks all share one kind is
always written as one letter, so each architecture has exactly one canonical string.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from blocks.unet import STAGES, UNetConfig, stage_layout
from search_spaces.errors import ArchError

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("enc", ("enc1", "enc2", "enc3")),
    ("lat", ("lat",)),
    ("dec", ("dec3", "dec2", "dec1")),
    ("ref", ("ref",)),
)
_LEVEL = re.compile(r"^[A-Z]+$")


def _canonical_level(kinds: Sequence[str]) -> str:
    return kinds[0] if len(set(kinds)) == 1 else "".join(kinds)


@dataclass(frozen=True)
class Arch:
    """Kinds per stage, in :data:`blocks.unet.STAGES` order; each entry is a canonical level string."""

    levels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.levels) != len(STAGES):
            raise ArchError(f"an Arch has {len(STAGES)} levels, got {len(self.levels)}")
        for lv in self.levels:
            if not _LEVEL.match(lv):
                raise ArchError(f"level {lv!r} is not a sequence of block-kind letters")
            if _canonical_level(lv) != lv:
                raise ArchError(f"level {lv!r} is not canonical (write {_canonical_level(lv)!r})")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, known_kinds: Iterable[str] | None = None) -> Arch:
        """Parse a string such as ``enc:T,M,E|lat:M|dec:E,M,T|ref:E`` (whitespace ignored)."""
        s = "".join(str(text).split())
        parts = s.split("|")
        want = [g for g, _ in GROUPS]
        if len(parts) != len(GROUPS):
            raise ArchError(f"malformed arch {text!r}: expected groups {'|'.join(w + ':...' for w in want)}")
        levels: list[str] = []
        for part, (group, stages) in zip(parts, GROUPS, strict=True):
            name, sep, body = part.partition(":")
            if not sep or name != group:
                raise ArchError(f"malformed arch {text!r}: group {part!r} should start with '{group}:'")
            items = body.split(",")
            if len(items) != len(stages):
                raise ArchError(
                    f"malformed arch {text!r}: '{group}' needs {len(stages)} level(s), got {len(items)}"
                )
            for item in items:
                if not _LEVEL.match(item):
                    raise ArchError(f"malformed arch {text!r}: level {item!r} is not block-kind letters")
                levels.append(_canonical_level(item))
        arch = cls(tuple(levels))
        if known_kinds is not None:
            arch.check_kinds(known_kinds)
        return arch

    @classmethod
    def from_block_kinds(cls, kinds: Mapping[str, Sequence[str]]) -> Arch:
        return cls(tuple(_canonical_level(list(kinds[s])) for s in STAGES))

    @classmethod
    def uniform(cls, kind: str) -> Arch:
        return cls(tuple(kind for _ in STAGES))

    # -- views ----------------------------------------------------------------------------------
    def __str__(self) -> str:
        it = iter(self.levels)
        return "|".join(f"{g}:" + ",".join(next(it) for _ in stages) for g, stages in GROUPS)

    @property
    def string(self) -> str:
        return str(self)

    @property
    def hash(self) -> str:
        """First 16 hex digits of SHA-256 of the canonical string; stable across runs and machines."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:16]

    def kinds_used(self) -> set[str]:
        return {k for lv in self.levels for k in lv}

    def check_kinds(self, known: Iterable[str]) -> None:
        unknown = self.kinds_used() - set(known)
        if unknown:
            raise ArchError(f"unknown block kind(s) {sorted(unknown)} in {self} (known: {sorted(known)})")

    def block_kinds(self, cfg: UNetConfig) -> dict[str, list[str]]:
        """Expand to one kind per block for the network ``cfg`` describes."""
        out: dict[str, list[str]] = {}
        for s, lv in zip(stage_layout(cfg), self.levels, strict=True):
            if len(lv) == 1:
                out[s.name] = [lv] * s.depth
            elif len(lv) == s.depth:
                out[s.name] = list(lv)
            else:
                raise ArchError(f"{self}: stage {s.name} has {s.depth} blocks but the arch gives {len(lv)}")
        return out

    def count(self, cfg: UNetConfig, kind: str) -> int:
        return sum(ks.count(kind) for ks in self.block_kinds(cfg).values())
