"""ztaudit.core: the lake contract. Config, errors, table schemas, views, atomic files, locks, time.

Imports nothing else of ztaudit; every other package builds on it.
"""
