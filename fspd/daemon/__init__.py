"""``fspd serve``: the spool, the job scheduler, the control socket and systemd integration."""
