"""The ``tunesmith`` command: ``main.py`` parses and dispatches; one module per command.

Nothing below the CLI imports it; every heavy import happens inside a command.
"""
