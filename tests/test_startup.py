"""Start-up cost: every `lrp` run imports the CLI, so what only BoW models, checks or plots need is imported late.

scikit-learn (with scipy.stats under it) alone took 1.8 s of a 4 s import of `lrp_cli.cli` before this was so."""

import subprocess
import sys

HEAVY = ("sklearn", "scipy.stats", "skimage", "matplotlib", "dask", "junitparser")


def test_importing_the_cli_leaves_heavy_libraries_unloaded():
    code = f"import sys, lrp_cli.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
