"""A third backend, for tests only (a FAKE: it runs sessions as plain host
processes, no container at all).  It exists to show what adding a backend
takes: this folder plus one line in hatchway/backends/registry.py (the tests
add that line at run time), and nothing else in the daemon or the admin
command changes."""
