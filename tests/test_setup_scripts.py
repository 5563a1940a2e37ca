"""The set-up's refusals: the Makefile's route variable and tools/install_mmcv.sh's pin and
sdist checksum, each stopping with a message that names the problem."""
import os
import os.path as osp
import shutil
import subprocess

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
INSTALL_MMCV = osp.join(ROOT, 'tools', 'install_mmcv.sh')

# A venv python for install_mmcv.sh that answers its two questions (torch's version, the
# venv's prefix) and whose pip "downloads" a corrupt sdist; any other pip call fails loudly.
FAKE_PYTHON = r'''#!/usr/bin/env bash
case "$*" in
  *torch.__version__*) echo 9.9.9 ;;
  *sys.prefix*) echo "$FAKE_PREFIX" ;;
  "-m pip download"*)
    while [[ $# -gt 0 ]]; do [[ "$1" == -d ]] && dest="$2"; shift; done
    echo corrupt > "$dest/mmcv-2.1.0.tar.gz" ;;
  *) echo "unexpected call: $*" >&2; exit 99 ;;
esac
'''


@pytest.mark.skipif(shutil.which('make') is None, reason='make is not installed')
def test_makefile_refuses_an_unknown_route():
    result = subprocess.run(['make', '-n', 'TORCH=rocm', 'env'], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode != 0
    assert 'TORCH=rocm: use TORCH=cuda (the default) or TORCH=cpu' in result.stderr


def _install_mmcv(tmp_path, pin):
    (tmp_path / 'requirements.txt').write_text(f'mmengine==0.10.7\n{pin}\n')
    python = tmp_path / 'python'
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    prefix = tmp_path / 'venv'
    prefix.mkdir()
    env = dict(os.environ, FAKE_PREFIX=str(prefix), MMCV_WHEELHOUSE=str(tmp_path / 'wheels'),
               TMPDIR=str(tmp_path))
    result = subprocess.run(['bash', INSTALL_MMCV, str(python)], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    return result, prefix


def test_install_mmcv_refuses_a_pin_it_has_no_checksum_for(tmp_path):
    result, prefix = _install_mmcv(tmp_path, 'mmcv==2.2.0')
    assert result.returncode == 1
    assert 'requirements.txt pins mmcv==2.2.0' in result.stderr
    assert 'mmcv 2.1.0 only' in result.stderr
    assert not (prefix / '.mmcv-built-for-torch').exists()


def test_install_mmcv_refuses_a_corrupt_sdist(tmp_path):
    result, prefix = _install_mmcv(tmp_path, 'mmcv==2.1.0')
    assert result.returncode != 0
    assert 'FAILED' in result.stdout + result.stderr  # sha256sum --check names the file
    assert 'unexpected call' not in result.stderr  # stopped before building or installing
    assert not (prefix / '.mmcv-built-for-torch').exists()
    assert not (tmp_path / 'wheels').exists()
