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


def test_readme_own_folder_command_names_a_config_that_trains_a_folder(tmp_path: Path) -> None:
    """The README's own-folder command, with the README's placeholder path replaced by a real folder, resolves to a
    valid folder run (its shipped config, data.root set) — the command the section documents."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Train on your own folder"):]
    line = next(line for line in section.splitlines() if line.startswith("auxssl train "))
    args = line.split("#")[0].split()[1:]
    assert args[:2] == ["train", "own_folder"]
    (tmp_path / "photos").mkdir()
    args = [a.replace("/path/to/photos", str(tmp_path / "photos")) for a in args]
    result = subprocess.run([sys.executable, "-m", "auxssl", *args, "--print-config"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"root: {tmp_path / 'photos'}" in result.stdout and "dataset: folder" in result.stdout
    assert "backend: auto" in result.stdout and "cifar_stem: false" in result.stdout
