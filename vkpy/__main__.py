"""`python -m vkpy` is the `vkpy` command."""

from vkpy.cli import main

raise SystemExit(main())
