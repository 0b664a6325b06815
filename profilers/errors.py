"""Errors a profiler raises for the user: each is one clear line, and the CLI exits with code 2.

Every profiler fails fast and typed: an unreachable device, a missing token or an unknown
device name is reported before a study starts (``Profiler.check()``), never as a hang and never
as a number that was not measured.
"""

from __future__ import annotations


class ProfilerError(Exception):
    """Base of every profiler error; the CLI prints it as one line and exits with ``exit_code``."""

    exit_code = 2


class UnknownProfiler(ProfilerError):
    """A profiler spec names no registered profiler, or is malformed."""


class UnknownDevice(ProfilerError):
    """The device named in the spec does not exist on that service."""


class DeviceUnreachable(ProfilerError):
    """The device or service could not be reached (SSH, network)."""


class MissingToken(ProfilerError):
    """A service needs an API token and none is configured."""


class ProfilerTimeout(ProfilerError):
    """The device did not answer within the time allowed."""


class ProfilerUnavailable(ProfilerError):
    """A library or tool the profiler needs is not installed here (tensorrt, qai-hub, trtexec)."""


class MeasurementError(ProfilerError):
    """The device ran but gave no usable measurement (tool failed, output not parseable)."""


class TableMismatch(ProfilerError):
    """A latency table was made for another shape, network configuration or block kind."""


class TableNotFound(ProfilerError):
    """No latency table exists yet for this profiler, network configuration and shape."""
