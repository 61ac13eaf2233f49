"""The README holds no unfilled placeholder such as "(DEMO_FULL_TIME)"."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_no_upper_case_placeholder_is_left():
    assert re.findall(r"\([A-Z][A-Z0-9]*_[A-Z0-9_]+\)", README.read_text()) == []
