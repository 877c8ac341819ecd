"""One module per ``ztaudit`` subcommand; registered in ``pipeline/cli.py`` (``COMMANDS``)."""
