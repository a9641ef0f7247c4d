"""The `vaekit` command line: `app` (cli/app.py) and one module per group of commands, assembled in cli/main.py."""
