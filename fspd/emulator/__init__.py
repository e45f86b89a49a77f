"""A strict local EBS Direct + EC2 emulator (see docs/emulator.md).

It imports nothing of fspd's transfer code on purpose: it must not share fspd's mistakes.
"""
