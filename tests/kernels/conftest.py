"""Make ``tolerances`` (the one tolerance table of the kernel tests) importable under ``--import-mode=importlib``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
