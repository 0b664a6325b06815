"""The pre-aligned block zoo: a trained teacher and feature-distilled surrogates for every slot."""

from ens.zoo.manifest import ZooError, ZooManifest
from ens.zoo.store import Zoo

__all__ = ["Zoo", "ZooError", "ZooManifest"]
