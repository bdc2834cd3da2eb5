#!/bin/sh
# /usr/bin/sentinel: the agent's console script, run by the Python of its virtualenv in
# isolated mode (-I), so that PYTHONPATH, PYTHONHOME or a user site-packages in the
# caller's environment cannot change the code a security agent runs.
exec /usr/lib/sentinel/venv/bin/python -I /usr/lib/sentinel/venv/bin/sentinel "$@"
