"""Certified-accuracy curves, envelopes and tables from certification output files."""
