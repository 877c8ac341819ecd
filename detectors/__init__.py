"""ztaudit.detectors: correlation and anomaly detectors over the lake, producing findings."""
