#!/usr/bin/env python3
"""Every Criterion test in tests/integration is run by meson.

meson runs each integration test by name (--filter), from the lists in
tests/integration/meson.build: a Test() missing there is compiled but never
run, in CI or anywhere (three of round 11's did so until this check).
Usage: check_registered.py DIR (tests/integration).  Exit 1 with the names
missing."""
import glob
import os
import re
import sys

here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, 'meson.build')) as f:
    registered = set(re.findall(r"'([a-z_0-9]+/[a-z_0-9]+)'", f.read()))
missing = []
for path in sorted(glob.glob(os.path.join(here, '*.c'))):
    with open(path) as f:
        for m in re.finditer(r'^Test\((\w+),\s*(\w+)', f.read(), re.M):
            name = m.group(1) + '/' + m.group(2)
            if name not in registered:
                missing.append('%s: %s' % (os.path.basename(path), name))
if missing:
    print('tests compiled but not run (add them to tests/integration/meson.build):')
    print('\n'.join('  ' + m for m in missing))
    sys.exit(1)
print('%d integration tests, each run by meson' % len(registered))
