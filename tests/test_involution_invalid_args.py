"""involution() with random, mostly invalid arguments, in a child process (a crash of the
op fails this test, naming the call, instead of killing pytest): every call must raise a
ValueError/RuntimeError naming involution, or return the unfold reference's result."""
import os
import subprocess
import sys

import pytest

from involution_mm.ops import HAS_EXTENSION

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not HAS_EXTENSION, reason='the compiled extension is not built')
@pytest.mark.parametrize('seed', [0, 1])
def test_random_arguments_raise_named_errors_or_match_reference(seed):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE)] + os.environ.get('PYTHONPATH', '').split(os.pathsep)))
    r = subprocess.run([sys.executable, os.path.join(HERE, 'involution_invalid_args_child.py'),
                        '250', str(seed)], env=env, text=True, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=600)
    lines = r.stdout.splitlines()
    calls = [line for line in lines if line.startswith('CALL')]
    assert r.returncode == 0, (
        f'child exited with {r.returncode} after {len(calls)} calls; last: '
        f"{calls[-1] if calls else None}\n{r.stderr[-4000:]}")
    done = [line for line in lines if line.startswith('DONE')]
    assert done, r.stdout[-2000:]
    counts = dict(part.split('=') for part in done[-1].split()[1:])
    # both kinds of outcome were exercised
    assert int(counts['errors']) >= 100 and int(counts['results']) >= 25, done
