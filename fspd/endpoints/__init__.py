"""Sources and sinks: every place blocks come from or go to, each implementing the contract
of :mod:`fspd.endpoint` and registered for the job spec types it serves (``registry.py``)."""
