"""Zero-trust DICOMweb gateway: the single policy enforcement point in front of the archive."""
