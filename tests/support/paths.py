"""Where things are, for tests in any folder under tests/."""

from pathlib import Path

SUPPORT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SUPPORT_DIR.parents[1]
FAKE_EDGETPU_COMPILER = SUPPORT_DIR / "fake_edgetpu_compiler"
