"""Plugins: finding them by entry point, the transport base class, hook dispatch, and the built-in
``local`` transport."""
