"""genropy's own ``gnrdaemon`` console script hands over to gnr_daemon's command line."""

import subprocess
import sys

import pytest

from conftest import clean_environment

pytest.importorskip("gnr.web")


def test_genropy_script_runs_our_cli(tmp_path):
    # The same wrapper pip writes for genropy's console script entry point.
    script = tmp_path / "gnrdaemon"
    script.write_text(
        f"#!{sys.executable}\nimport re\nimport sys\nfrom gnr.web.cli.gnrdaemon import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    env = clean_environment(tmp_path)
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("gnrdaemon ")
    keygen = subprocess.run([str(script), "keygen"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert len(keygen.stdout.strip()) == 64
