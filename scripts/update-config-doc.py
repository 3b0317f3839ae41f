"""Rewrite the settings table in doc/configuration.md from txvoice.config (run after adding a setting)."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from txvoice.config import config_table  # noqa: E402

doc = Path(__file__).resolve().parent.parent / "doc" / "configuration.md"
text = doc.read_text()
new, count = re.subn(r"^\| option \|.*?\n(?=\n)", config_table(), text, count=1, flags=re.M | re.S)
if count != 1:
    raise SystemExit("table not found in doc/configuration.md")
doc.write_text(new)
