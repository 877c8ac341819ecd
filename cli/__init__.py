"""ztaudit.cli: every ``ztaudit`` command, one module each, registered in :data:`ztaudit.cli.main.COMMANDS`."""
