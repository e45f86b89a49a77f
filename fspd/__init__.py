"""fspd: a daemon that moves EBS snapshots between EBS Direct, files, devices and S3."""

__version__ = "0.1.0"
