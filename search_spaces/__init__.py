"""What can be searched: slots, the ``Arch`` value, and sampling an ``Arch`` from a trial."""

from search_spaces.arch import Arch
from search_spaces.errors import ArchError
from search_spaces.sampling import arch_from_params, arch_to_params, param_names, sample_arch

__all__ = ["Arch", "ArchError", "arch_from_params", "arch_to_params", "param_names", "sample_arch"]
