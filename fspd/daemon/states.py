"""The states of a daemon job. A module of its own: the CLI's clients use them and must not
import the scheduler (and with it the engine)."""

TERMINAL = ("completed", "failed", "cancelled")
STATES = ("queued", "running", "paused", *TERMINAL)
