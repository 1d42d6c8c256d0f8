"""Clinical operating points, calibration, subgroups and their figures."""
