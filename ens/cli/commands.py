"""Imports each verb module so that it registers on the app. One line per module."""

from __future__ import annotations

import importlib

_VERB_MODULES = (
    "ens.cli.data_cmd",
    "ens.cli.profile_cmd",
    "ens.cli.zoo_cmd",
    "ens.cli.search_cmd",
    "ens.cli.finalize_cmd",
)

for _name in _VERB_MODULES:
    importlib.import_module(_name)
