"""The `roost` command line: operator and developer tools around the running hub."""
