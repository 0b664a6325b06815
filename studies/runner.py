"""The search driver: ask, evaluate (in process or on Ray), tell; dedupe, retry, resume, interrupt.

The driver is the only process that writes the study. A trial's life:

1. ``study.ask()`` (waiting, re-enqueued trials first), ``space(trial) -> (key, payload)``;
2. if ``key`` (the arch hash) is already complete in the study, the trial is told the same values
   and marked ``duplicate_of``: nothing is evaluated twice;
3. otherwise ``evaluate(payload)`` runs on an executor and returns an :class:`Outcome`;
4. its metrics become the objective values, user attrs, constraints (``<metric>_budget``: value minus
   budget, <= 0 feasible) and artifacts; once told, its ``note`` becomes the trial's Note in
   optuna-dashboard (when that is installed), with its image artifacts shown in it; a duplicate's Note
   names the trial it repeats.

A dead worker fails the trial with its reason and re-enqueues the same parameters (up to
``max_retries``); an exception inside the evaluation fails it without retry. Ctrl-C fails the
in-flight trials with reason ``interrupted`` and re-enqueues them, so re-running the same command
resumes where it stopped. RUNNING trials left by a driver that died are failed and re-enqueued too: all
of them at start when this driver is the study's only writer (a SQLite study under its lock), and
otherwise only those whose heartbeat stopped (:mod:`studies.heartbeat`), checked at start and then
every heartbeat interval, so that parallel drivers on one server study never fail each other's trials.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.errors import StudyError
from studies.executors import WorkerLost, make_executor
from studies.heartbeat import Heartbeat, fail_stale, heartbeat_enabled

DIRECTIONS = {"maximize", "minimize"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")  # artifacts a Note shows inline


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" | "minimize"


@dataclass
class Outcome:
    metrics: dict[str, float]
    attrs: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # file name -> content
    note: str = ""  # Markdown: the trial's Note in optuna-dashboard, written after the trial is told


@dataclass
class RunConfig:
    n_trials: int
    workers: int = 1
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 1
    budgets: Mapping[str, float] = field(default_factory=dict)  # metric -> upper bound
    max_duplicates: int = 200
    max_consecutive_failures: int = 10
    exclusive: bool = True  # the only driver of this study: every RUNNING trial at start is stale


@dataclass
class RunSummary:
    completed: int = 0
    evaluated: int = 0
    duplicates: int = 0
    failed: int = 0
    retried: int = 0
    interrupted: bool = False
    exhausted: bool = False
    wall_s: float = 0.0


def create_or_load(name: str, storage: Any, objectives: Sequence[Objective], sampler,
                   attrs: Mapping[str, Any] | None = None) -> optuna.Study:
    for o in objectives:
        if o.direction not in DIRECTIONS:
            raise StudyError(f"objective {o.metric}: direction must be maximize or minimize")
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, load_if_exists=True,
                                directions=[o.direction for o in objectives])
    if list(study.directions) != [optuna.study.StudyDirection[o.direction.upper()] for o in objectives]:
        raise StudyError(f"study {name!r} exists with other objectives; use another --study-name")
    old = study.user_attrs.get("objectives")
    if old is not None and old != [o.metric for o in objectives]:
        raise StudyError(f"study {name!r} was created for objectives {old}; use another --study-name")
    study.set_user_attr("objectives", [o.metric for o in objectives])
    for k, v in (attrs or {}).items():
        if k not in study.user_attrs:
            study.set_user_attr(k, v)
    return study


def _complete_by_key(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = t.user_attrs.get("key")
        if key is not None and "duplicate_of" not in t.user_attrs:
            out.setdefault(key, t)
    return out


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL)


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial, reason: str,
             max_retries: int) -> bool:
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= max_retries:
        return False
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, "retries": retries + 1,
                                                        "retry_reason": reason}, skip_if_exists=False)
    return True


STALE_REASON = "stale: the search process running it stopped"


def recover_stale(study: optuna.Study, max_retries: int) -> int:
    """Fail every RUNNING trial (left by a driver that stopped) and re-enqueue it. Only for a driver
    that is the study's one writer. Returns their count."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # no live Trial exists for another process's trial, and a finished one takes no attrs: the reason
        # goes with its retry (``retry_of`` names the failed trial)
        study.tell(t.number, state=TrialState.FAIL)
        _requeue(study, t, STALE_REASON, max_retries + 1)
        n += 1
    return n


def stale_requeuer(max_retries: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """The storage's stale-trial callback: re-enqueue a dead driver's trial (see ``open_storage``)."""

    def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _requeue(study, trial, STALE_REASON, max_retries + 1)

    return requeue


def run_study(
    study: optuna.Study,
    objectives: Sequence[Objective],
    space: Callable[[optuna.Trial], tuple[str, Any]],
    evaluate: Callable[[Any], Outcome],
    cfg: RunConfig,
    artifact_store: Any = None,
    on_done: Callable[[optuna.trial.FrozenTrial | None, RunSummary], None] | None = None,
    storage: Any = None,
) -> RunSummary:
    """Run until the study holds ``cfg.n_trials`` complete evaluated trials (not counting duplicates).

    ``storage`` is the one the study was opened on; when it has heartbeats on, this driver beats for its
    trials and fails only the trials of drivers that stopped beating."""
    if cfg.n_trials < 1:
        raise StudyError("--trials must be at least 1")
    beating = storage is not None and heartbeat_enabled(storage)
    if cfg.exclusive or not beating:
        recover_stale(study, cfg.max_retries)
    if not beating:
        return _run(study, objectives, space, evaluate, cfg, artifact_store, on_done, None)
    with Heartbeat(study, storage, storage.get_heartbeat_interval()) as heart, warnings.catch_warnings():
        # this driver beats for the trials it asks for itself: Optuna's hint to use optimize() is moot
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return _run(study, objectives, space, evaluate, cfg, artifact_store, on_done, heart)


def _run(study, objectives, space, evaluate, cfg: RunConfig, artifact_store, on_done,
         heart: Heartbeat | None) -> RunSummary:
    t0 = time.monotonic()
    summary = RunSummary()
    last_check = -float("inf")
    done = _complete_by_key(study)
    summary.completed = len(done)
    if summary.completed >= cfg.n_trials:
        summary.wall_s = time.monotonic() - t0
        return summary
    executor = make_executor(cfg.workers, cfg.ray_address, cfg.cpus_per_trial, cfg.gpus_per_trial)
    slots = max(1, cfg.workers)
    stop = _StopFlag()
    in_flight: dict[int, tuple[optuna.Trial, str]] = {}
    dup_streak = fail_streak = 0
    try:
        while (summary.completed < cfg.n_trials or in_flight) and not stop.requested:
            if heart is not None and time.monotonic() - last_check >= heart.interval_s:
                last_check = time.monotonic()
                _sync_with_other_drivers(study, done, summary)
            while (len(in_flight) < slots and summary.completed + len(in_flight) < cfg.n_trials
                   and not summary.exhausted and not stop.requested):
                trial = study.ask()
                key, payload = space(trial)
                trial.set_user_attr("key", key)
                prev = done.get(key)
                running = next((n for n, (_, k) in in_flight.items() if k == key), None)
                if prev is not None or running is not None:
                    dup_streak += 1
                    summary.duplicates += 1
                    if prev is not None:
                        _copy_outcome(study, trial, prev, objectives)
                    else:
                        trial.set_user_attr("duplicate_of", running)
                        _fail(study, trial, f"duplicate of running trial {running}")
                    if dup_streak >= cfg.max_duplicates:
                        summary.exhausted = True
                    continue
                dup_streak = 0
                in_flight[trial.number] = (trial, key)
                if heart is not None:
                    heart.add(trial.number)
                executor.submit(trial.number, evaluate, payload)
            if not in_flight:
                break
            got = executor.wait_one(timeout=1.0)
            if got is None:
                continue
            number, result = got
            trial, key = in_flight.pop(number)
            if heart is not None:
                heart.discard(number)
            if isinstance(result, BaseException):
                reason = _failed(study, trial, result, cfg, summary)
                if on_done:
                    on_done(None, summary)
                fail_streak += 1
                if fail_streak >= cfg.max_consecutive_failures:
                    raise StudyError(f"{fail_streak} trials failed in a row; the last: {reason}")
                continue
            fail_streak = 0
            frozen = _record(study, trial, result, objectives, cfg.budgets, artifact_store)
            summary.evaluated += 1
            if frozen is not None:
                done[key] = frozen
                summary.completed += 1
            if on_done:
                on_done(frozen, summary)
        if stop.requested:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        summary.interrupted = True
        executor.cancel_all()
        for trial, _key in in_flight.values():
            _fail(study, trial, "interrupted")
            _requeue(study, trial, "interrupted", cfg.max_retries + 1)
        in_flight.clear()
    finally:
        stop.restore()
        executor.shutdown()
        summary.wall_s = time.monotonic() - t0
    return summary


def _sync_with_other_drivers(study: optuna.Study, done: dict, summary: RunSummary) -> None:
    """Fail dead drivers' trials (heartbeats); count and dedupe against what live ones completed."""
    fail_stale(study)
    done.update({k: t for k, t in _complete_by_key(study).items() if k not in done})
    summary.completed = len(done)


def _failed(study: optuna.Study, trial: optuna.Trial, error: BaseException, cfg: RunConfig,
            summary: RunSummary) -> str:
    """Fail ``trial`` with the error as its reason; a lost worker's trial is re-enqueued. Returns the reason."""
    reason = f"{error.__class__.__name__}: {error}".strip()[:500]
    _fail(study, trial, reason)
    summary.failed += 1
    if isinstance(error, WorkerLost) and _requeue(study, trial, reason, cfg.max_retries):
        summary.retried += 1
    return reason


class _StopFlag:
    """The first Ctrl-C asks the driver to stop between storage writes (never inside one); a second one
    interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def _values(metrics: Mapping[str, float], objectives: Sequence[Objective]) -> list[float]:
    missing = [o.metric for o in objectives if o.metric not in metrics]
    if missing:
        raise StudyError(f"the evaluation returned no value for objective(s) {missing}")
    return [float(metrics[o.metric]) for o in objectives]


def _set_constraints(trial: optuna.Trial, metrics: Mapping[str, float], budgets: Mapping[str, float]) -> None:
    if not budgets:
        return
    cons = []
    for metric, bound in budgets.items():
        v = float(metrics[metric]) - float(bound)
        trial.set_constraint(f"{metric}_budget", v)
        cons.append(v)
    # optuna-dashboard 0.21 reads only the legacy list; mirror it in user attrs
    trial.set_user_attr("constraints", cons)
    trial.set_user_attr("feasible", all(c <= 0 for c in cons))


def _record(study, trial, outcome: Outcome, objectives, budgets, artifact_store):
    try:
        values = _values(outcome.metrics, objectives)
    except StudyError as exc:
        _fail(study, trial, str(exc))
        return None
    for k, v in outcome.attrs.items():
        trial.set_user_attr(k, v)
    for k, v in outcome.metrics.items():
        trial.set_user_attr(k, v)
    _set_constraints(trial, outcome.metrics, budgets)
    ids: dict[str, str] = {}
    if artifact_store is not None and outcome.artifacts:
        from optuna.artifacts import upload_artifact

        with tempfile.TemporaryDirectory() as d:
            for name, data in outcome.artifacts.items():
                p = Path(d) / name
                p.write_bytes(data)
                ids[name] = upload_artifact(artifact_store=artifact_store, file_path=str(p), study_or_trial=trial)
        trial.set_user_attr("artifacts", ids)
    frozen = study.tell(trial, values)
    if outcome.note:
        save_note(trial, outcome.note + _image_links(study, trial._trial_id, ids))
    return frozen


def save_note(trial: optuna.Trial, body: str) -> None:
    """Write ``body`` (Markdown) as the trial's Note in optuna-dashboard; nothing when it is not installed."""
    try:
        from optuna_dashboard import save_note as dashboard_note
    except ImportError:
        return
    dashboard_note(trial, body)


def _image_links(study: optuna.Study, trial_id: int, artifact_ids: Mapping[str, str]) -> str:
    """Markdown that shows a trial's image artifacts full size in a Note (optuna-dashboard's artifact URLs)."""
    return "".join(f"\n![{name}](/artifacts/{study._study_id}/{trial_id}/{aid})\n"
                   for name, aid in artifact_ids.items() if name.lower().endswith(IMAGE_SUFFIXES))


def _copy_outcome(study, trial, prev: optuna.trial.FrozenTrial, objectives) -> None:
    for k, v in prev.user_attrs.items():
        if k not in ("key", "retry_of", "retries", "retry_reason", "artifacts"):
            trial.set_user_attr(k, v)
    trial.set_user_attr("duplicate_of", prev.number)
    for key, value in (prev.constraints or {}).items() if isinstance(prev.constraints, dict) else []:
        trial.set_constraint(key, value)
    study.tell(trial, list(prev.values))
    save_note(trial, f"Duplicate of trial {prev.number} (the same parameters): its values are copied; its note "
                     "is there.\n" + _image_links(study, prev._trial_id, prev.user_attrs.get("artifacts") or {}))
