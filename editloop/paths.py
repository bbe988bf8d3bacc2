"""Paths inside the installed package (no heavy imports here)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BASE_DIR = PACKAGE_DIR / "weights" / "base"  # the committed base models
INSTRUCT_DIR = PACKAGE_DIR / "weights" / "instruct"  # the committed instruction editor (bench/edit_quality.py)
