"""Moved to :mod:`fspd.context` (below ``archive/`` as well); kept for old imports."""

from fspd.context import JobContext, job_context

__all__ = ["JobContext", "job_context"]
