"""examples/quickstart.ipynb runs: its code cells, in order, in one fresh Python process, as a
kernel runs them (one namespace; a cell's last expression evaluated and shown), and any error in
any cell fails the test with the cell's number. No Jupyter package is needed: the notebook is
JSON. So the example cannot go stale while CI passes."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.testing.presets import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"

# Runs the cells of the notebook named by argv[1] with the working directory examples/, as
# Jupyter starts a kernel beside its notebook; matplotlib draws off screen (plt.show() shows nothing).
_RUNNER = r"""
import ast, json, sys
cells = [c for c in json.load(open(sys.argv[1]))["cells"] if c["cell_type"] == "code"]
namespace = {"__name__": "__main__"}
for number, cell in enumerate(cells, 1):
    source = "".join(cell["source"])
    tree = ast.parse(source, filename=f"<cell {number}>")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, f"<cell {number}>", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), f"<cell {number}>", "eval"), namespace)
        if value is not None:
            print(repr(value))
    print(f"cell {number} of {len(cells)} done", flush=True)
"""


def test_the_notebook_is_clean():
    """Stored without outputs (they would go stale), every code cell plain Python (no magics)."""
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 5
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None
        assert not any(line.lstrip().startswith(("%", "!")) for line in cell["source"])


@pytest.mark.slow
def test_the_notebook_runs(tmp_path):
    start = time.time()
    result = subprocess.run([sys.executable, "-c", _RUNNER, str(NOTEBOOK)], cwd=REPO / "examples",
                            capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "QUICKSTART_DIR": str(tmp_path), "MPLBACKEND": "Agg"})
    seconds = time.time() - start
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    cells = sum(c["cell_type"] == "code" for c in json.loads(NOTEBOOK.read_text())["cells"])
    assert f"cell {cells} of {cells} done" in result.stdout
    assert "held-out accuracy" in result.stdout
    print(f"quickstart.ipynb ran in {seconds:.0f} s")
