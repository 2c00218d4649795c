"""The README's code example is examples/wrap_byol.py, and it runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_is_the_example_file_and_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = (ROOT / "examples" / "wrap_byol.py").read_text()
    code = example.split('"""', 2)[2].lstrip("\n")  # the file minus its docstring
    assert blocks and blocks[0] == code
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "wrap_byol.py")], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("'loss/rotation'") == 3
