"""Imports each verb module so that it registers on the app. One line per module."""

from __future__ import annotations

import importlib

_VERB_MODULES = (
    "ens.cli.arch_cmd",
    "ens.cli.data_cmd",
    "ens.cli.profile_cmd",
    "ens.cli.zoo_cmd",
    "ens.cli.search_cmd",
    "ens.cli.finalize_cmd",
)

for _name in _VERB_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a verb module not written yet
        if exc.name != _name:
            raise
