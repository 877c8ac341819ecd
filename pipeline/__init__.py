"""ztaudit.pipeline: sources, decode, normalize, lake sink, catalog, reports and the CLI."""
