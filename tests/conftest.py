"""Shared fixtures: the control plane fixtures come from vkpy.testing (the pytest11 entry point)."""
