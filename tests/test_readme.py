"""The README's ten-line example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_gym_make_example_runs(capsys):
    text = README.read_text(encoding="utf-8")
    section = text.split("## The environment in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["terminated"] is True and namespace["info"]["image"].shape == (16, 16, 3)
    assert "a handwritten digit" in capsys.readouterr().out
