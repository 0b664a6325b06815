"""A latency cache, so that no architecture is measured twice on one device.

Key: (arch hash, profiler spec, device, input shape, precision), within the blocks' graph revision
(:data:`GRAPH_REVISION`: one SQL table per revision, so a latency of an older export of the same
architecture is never served). Store: one SQLite file,
``$ENS_CACHE_DIR/latency/latency.sqlite`` (default ``~/.cache/ens/latency/latency.sqlite``), or
any directory or file given as ``path``. Every write is one SQLite transaction, so a crash never
leaves a half-written entry, and several processes may share the file (SQLite locks it). A file
that is not a readable SQLite database (garbage, truncated) is moved aside to
``latency.sqlite.corrupt-<timestamp>`` with a :class:`RuntimeWarning` naming both paths, and a
fresh cache takes its place: measuring goes on, only the cached results are lost.

Only measured or reported results are cached: predictions and proxy counts are instant and a
recalibrated table must not be shadowed by old predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from profilers import onnx_info
from profilers.base import Profiler, WrappingProfiler, format_shape, parse_shape
from profilers.errors import MeasurementError
from profilers.result import MEASURED, REPORTED, LatencyResult

CACHE_ENV = "ENS_CACHE_DIR"
FILENAME = "latency.sqlite"
#: Bumped whenever the exported ONNX graph of a block or network changes (not its weights): latencies
#: measured on an older graph are not served for the new one (the cache and the latency tables are keyed
#: by it). 2: LayerNorm exports as one LayerNormalization (``blocks.norm``); the INT8 graph has U8 activations,
#: quantized residual sums (QLinearAdd) and layer scales folded into the convs. 3: the EFM gate exports as
#: ``f + f * m`` and, in INT8, its simple gates, sigmoid and gate product run as QLinearMul / QLinearSigmoid /
#: QLinearAdd (``blocks.efm``, ``blocks.ops``). 4: each down-sampler's conv + pixel_unshuffle is one strided
#: conv (``profilers.unshuffle_fusion``); in INT8 the up-samplers' pixel shuffles run channels-last
#: (``ens.finalize.shuffle_layout``). 5: in INT8 each EFM gate map has as many channels as the features it gates
#: (``profilers.gate_expansion``: the gate product is element-wise, not a broadcast). 6: in INT8 each LDG's ReLU
#: is the zero clip of an unsigned quantizer, which ONNX Runtime drops (``ens.finalize.qat.RELU_FOLD``).
GRAPH_REVISION = 6
TABLE = f"results_g{GRAPH_REVISION}"
_SIDE_FILES = ("-journal", "-wal", "-shm")  # SQLite's companions of a database file

T = TypeVar("T")


def cache_root() -> Path:
    """``$ENS_CACHE_DIR`` or ``~/.cache/ens``: the root of every ens cache."""
    env = os.environ.get(CACHE_ENV)
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "ens"


def default_cache_dir() -> Path:
    return cache_root() / "latency"


@dataclass(frozen=True)
class CacheKey:
    arch_hash: str
    profiler: str
    device: str
    shape: str  # "1x3x256x256"
    precision: str

    @classmethod
    def make(
        cls, arch_hash: str, profiler: Profiler | str, shape: Sequence[int] | str, precision: str, device: str = ""
    ) -> CacheKey:
        if isinstance(profiler, Profiler):
            device = device or profiler.device
            profiler = profiler.spec
        return cls(str(arch_hash), str(profiler), str(device), format_shape(parse_shape(shape)), str(precision))


class LatencyCache:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        p = Path(path) if path is not None else default_cache_dir()
        self.path = p / FILENAME if (p.is_dir() or not p.suffix) else p
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._run(lambda db: None)

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(db)`` in one transaction on a cache with its table; a corrupt file is set aside once, first."""
        try:
            with self._connect() as db:
                _create_table(db)
                return fn(db)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._set_aside(exc)
        with self._connect() as db:
            _create_table(db)
            return fn(db)

    def _set_aside(self, exc: sqlite3.DatabaseError) -> None:
        """Move the corrupt file (and its journal) to ``<name>.corrupt-<timestamp>`` and warn, in one line."""
        if _readable(self.path):  # another process has set it aside and started a new one already
            return
        aside = _aside_path(self.path)
        try:
            self.path.rename(aside)
        except FileNotFoundError:
            return
        for suffix in _SIDE_FILES:  # a hot journal must not be replayed into the new database
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(aside.with_name(aside.name + suffix))
        warnings.warn(f"latency cache {self.path} is not a readable SQLite database ({exc}); "
                      f"moved it to {aside} and started an empty cache", RuntimeWarning, stacklevel=4)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0)
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    def get(self, key: CacheKey) -> LatencyResult | None:
        row = self._run(lambda db: db.execute(
            f"SELECT result FROM {TABLE} WHERE arch_hash=? AND profiler=? AND device=? AND shape=? AND precision=?",
            (key.arch_hash, key.profiler, key.device, key.shape, key.precision),
        ).fetchone())
        return LatencyResult.from_dict(json.loads(row[0])) if row else None

    def put(self, key: CacheKey, result: LatencyResult) -> None:
        row = (key.arch_hash, key.profiler, key.device, key.shape, key.precision,
               json.dumps(result.to_dict(), sort_keys=True), time.time())
        self._run(lambda db: db.execute(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)", row))

    def __contains__(self, key: CacheKey) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return int(self._run(lambda db: db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]))

    def keys(self) -> list[CacheKey]:
        rows = self._run(lambda db: db.execute(f"SELECT arch_hash, profiler, device, shape, precision FROM {TABLE}")
                         .fetchall())
        return [CacheKey(*r) for r in rows]


def _create_table(db: sqlite3.Connection) -> None:
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} ("
        " arch_hash TEXT NOT NULL, profiler TEXT NOT NULL, device TEXT NOT NULL,"
        " shape TEXT NOT NULL, precision TEXT NOT NULL, result TEXT NOT NULL, created REAL NOT NULL,"
        " PRIMARY KEY (arch_hash, profiler, device, shape, precision))"
    )


def is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """True for "not a database" and "malformed" (SQLITE_NOTADB, SQLITE_CORRUPT*), not for a locked or
    unopenable file (an OperationalError): only those files are set aside."""
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    if name is not None:
        return name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT")
    msg = str(exc).lower()
    return type(exc) is sqlite3.DatabaseError and ("not a database" in msg or "malformed" in msg)


def _readable(path: Path) -> bool:
    """Whether ``path`` (now) is a sound SQLite database; a missing file counts, SQLite creates it."""
    try:
        db = sqlite3.connect(path, timeout=30.0)
        try:
            return db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return not is_corrupt(exc)


def _aside_path(path: Path) -> Path:
    """``latency.sqlite.corrupt-20250101-120000`` (``-2``, ``-3``... when that name is taken)."""
    base = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    aside, n = base, 1
    while aside.exists():
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    return aside


def file_key(onnx_path: str | os.PathLike[str]) -> str:
    """The architecture hash ``ens`` wrote into the file, else ``sha256:<content hash>``."""
    meta = onnx_info.read_metadata(onnx_path)
    if meta.get("arch_hash"):
        return str(meta["arch_hash"])
    h = hashlib.sha256()
    with open(onnx_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()[:32]


class CachedProfiler(WrappingProfiler):
    """Wraps a profiler: answers from the cache when it can, measures and stores otherwise.

    ``measure(..., arch_hash=...)`` keys by architecture; without it the key is the file's
    ``ens.arch_hash`` metadata, else its content hash. Hits carry ``details["cache"] == "hit"``.
    """

    def __init__(self, inner: Profiler, cache: LatencyCache | str | os.PathLike[str] | None = None) -> None:
        super().__init__(inner)
        self.cache = cache if isinstance(cache, LatencyCache) else LatencyCache(cache)
        self.hits = 0
        self.misses = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def profile(self, net, precision=None, *, cache=True, onnx_path=None, seed: int = 0) -> LatencyResult:
        return self.inner.profile(net, precision, cache=self.cache, onnx_path=onnx_path, seed=seed)

    def key(self, onnx_path, input_shape, precision: str | None = None, arch_hash: str | None = None) -> CacheKey:
        prec = (precision or self.inner.default_precision).lower()
        try:
            arch_key = arch_hash or file_key(onnx_path)
        except (OSError, ValueError) as exc:
            raise MeasurementError(f"cannot read {onnx_path}: {exc}") from None
        return CacheKey.make(arch_key, self.inner, input_shape, prec)

    def lookup(self, arch_hash: str, input_shape, precision: str | None = None) -> LatencyResult | None:
        prec = (precision or self.inner.default_precision).lower()
        return self.cache.get(CacheKey.make(arch_hash, self.inner, input_shape, prec))

    def measure(self, onnx_path, input_shape, precision: str | None = None, arch_hash: str | None = None):
        key = self.key(onnx_path, input_shape, precision, arch_hash)
        hit = self.cache.get(key)
        if hit is not None:
            self.hits += 1
            return hit.replace(details={**hit.details, "cache": "hit"})
        self.misses += 1
        result = self.inner.measure(onnx_path, input_shape, precision)
        self.store(key, result)
        return result

    def store_for(self, arch_hash: str, input_shape, precision: str, result: LatencyResult) -> None:
        self.store(CacheKey.make(arch_hash, self.inner, input_shape, precision), result)

    def store(self, key: CacheKey, result: LatencyResult) -> None:
        if result.source in (MEASURED, REPORTED):
            self.cache.put(key, result)
