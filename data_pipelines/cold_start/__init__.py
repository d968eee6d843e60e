"""Cold-start CoT data by modality bridging (Vision-R1): `mmrl build-data cold-start CONFIG [key=value ...]`."""
