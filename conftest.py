"""Root conftest: loads the controls plugin for every test run, whichever way pytest starts
(`python -m pytest` or the bare `pytest` script), since pytest puts this directory on sys.path
before importing this file."""

pytest_plugins = ["tests.plugins.controls", "tests.plugins.postgres"]
