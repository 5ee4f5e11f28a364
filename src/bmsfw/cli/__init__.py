"""The ``bmsfw`` command line: thin over the library (parse, call, render).

Exit codes (documented in docs/cli.md):

==  ==========================================================
0   success
1   unexpected internal error
2   usage error (bad arguments, unreadable files)
3   package or trust rejected (E1xx)
4   device refused or failed; update rolled back (E2xx)
5   transport failure (E3xx)
6   preflight failed, nothing written (E4xx)
7   update procedure failed or was interrupted (E5xx)
8   fleet server / agent error (E6xx)
==  ==========================================================
"""

from bmsfw.cli._main import main

__all__ = ["main"]
