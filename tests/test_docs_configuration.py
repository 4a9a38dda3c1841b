"""docs/configuration.md lists every setting of config.py with its option and variable."""

import re
from pathlib import Path

from gnr_daemon.config import SETTINGS
from gnr_daemon.store.urls import _PARAMETERS

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def setting_rows():
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `(\w+)` \| (.*?) \| `(GNR_DAEMON_\w+)` \| (.*?) \|", line)
        if match:
            rows[match.group(1)] = {"option": match.group(2), "env": match.group(3),
                                    "xml": match.group(4)}
    return rows


def test_every_setting_documented():
    rows = setting_rows()
    assert sorted(rows) == sorted(setting.name for setting in SETTINGS)


def test_options_and_variables_match():
    rows = setting_rows()
    for setting in SETTINGS:
        row = rows[setting.name]
        assert f"`{setting.flag}`" in row["option"], setting.name
        assert row["env"] == setting.env, setting.name
        expected_xml = f"`{setting.xml_name}`" if setting.xml_name else "—"
        assert row["xml"] == expected_xml, setting.name


def test_every_store_parameter_documented():
    text = DOC.read_text(encoding="utf-8")
    for name in _PARAMETERS:
        assert f"| `{name}` |" in text, name
