"""Samplers by name, seeded."""

from __future__ import annotations

import warnings

import optuna

from studies.errors import StudyError

SAMPLERS = ("tpe", "nsga2", "random")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe`` (multivariate, grouped), ``nsga2`` or ``random``.

    Budgets need nothing here: the runner sets them with ``Trial.set_constraint``, which Optuna stores on
    the trial, and TPE and NSGA-II read ``FrozenTrial.constraints`` when they rank past trials (Optuna 5
    deprecated their ``constraints_func`` for it)."""
    from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler

    name = name.lower()
    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10,
                              constant_liar=True)
    if name == "nsga2":
        return NSGAIISampler(seed=seed, population_size=20)
    if name == "random":
        return RandomSampler(seed=seed)
    raise StudyError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
