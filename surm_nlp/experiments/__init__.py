"""Reproducible experiments from the SURM paper."""
