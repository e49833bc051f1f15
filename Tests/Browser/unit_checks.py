"""Checks run.py makes on bytes the unit page produced (artifacts), with real tools."""

CHECKS = []
