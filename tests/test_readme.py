"""The README's Python example runs as written."""
import re
from pathlib import Path


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)   # noqa: S102 (the README's own example)
    result = namespace["result"]
    assert result.meta_updates == 300 and result.inner_steps == 300
    assert (tmp_path / "runs" / "cts" / "metrics.jsonl").exists()
