"""The README's claims that can go stale: the paths it names and the benchmark tables it copies."""
import os
import re
from typing import Dict, List, Optional

import pytest

from tests.markdown import tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
RESULTS = os.path.join(REPO, "benchmarks", "results", "longtail", "results.md")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _table_with(markdown: str, columns: List[str], first_method: Optional[str]
                ) -> List[Dict[str, str]]:
    """The first table that has ``columns`` and whose first row is ``first_method`` (any: None)."""
    for rows in tables(markdown):
        if rows and all(c in rows[0] for c in columns) and \
                first_method in (None, rows[0].get("method")):
            return rows
    raise AssertionError(f"no table with columns {columns} starting at {first_method!r}")


def test_table_parser_reads_cells_by_header():
    text = "x\n| method | AP |\n|---|---:|\n| a | 1.0 |\n| b | 2.0 |\n\n| k |\n|---|\n| z |\n"
    assert tables(text) == [[{"method": "a", "AP": "1.0"}, {"method": "b", "AP": "2.0"}],
                            [{"k": "z"}]]


def test_every_path_the_readme_names_exists():
    text = _read(README)
    paths = set(re.findall(r"`((?:benchmarks|configs|tools|ltdet|tests)/[^`\s]*)`", text))
    paths |= set(re.findall(r"\]\(((?:benchmarks|configs|tools|ltdet|tests)/[^)\s]*)\)", text))
    paths |= set(re.findall(r"--config-file (configs/\S+\.yaml)", text))
    assert len(paths) > 20, sorted(paths)  # the patterns still match the README's style
    missing = []
    for p in sorted(paths):
        if "<recipe>" in p:  # one config per recipe of the methods table
            expanded = [p.replace("<recipe>", r) for r in _recipes(text)]
            missing += [e for e in expanded if not os.path.exists(os.path.join(REPO, e))]
        elif not os.path.exists(os.path.join(REPO, p.rstrip("/"))):
            missing.append(p)
    assert not missing, f"README names paths that do not exist: {missing}"


def _recipes(text: str) -> List[str]:
    rows = [r for rows in tables(text) for r in rows
            if r.get("recipe", "").startswith("decoupled:")]
    assert len(rows) == 2, rows
    names = []
    for r in rows:
        listed = r["recipe"].split(":", 1)[1].split("(")[0]
        names += [n.strip() for n in listed.split(",") if n.strip()]
    return names


def test_methods_table_names_every_recipe_of_every_set():
    recipes = set(_recipes(_read(README)))
    for version in ("LVISv0.5", "LVISv1", "synthetic"):
        folder = os.path.join(REPO, "configs", version, "decoupled")
        on_disk = {f[:-5] for f in os.listdir(folder)
                   if f.endswith(".yaml") and not f.startswith("Base-")}
        assert on_disk == recipes, (version, sorted(on_disk ^ recipes))


@pytest.mark.skipif(not os.path.exists(RESULTS), reason="no benchmark results")
def test_readme_benchmark_tables_are_the_latest_results():
    readme, results = _read(README), _read(RESULTS)
    columns = ["mask AP", "APr", "APc", "APf", "box AP", "seeds", "status"]
    shown = _table_with(readme, columns, "base_softmax_rfs")
    latest = _table_with(results, columns, "base_softmax_rfs")
    assert shown == latest

    paired = ["Δ mask AP", "Δ APr", "APr up in", "APr up, AP ≥ -1"]
    shown = _table_with(readme, paired, "balanced_softmax")
    latest = _table_with(results, paired, "balanced_softmax")
    keep = ["method"] + paired
    assert [{k: r[k] for k in keep} for r in shown] == [{k: r[k] for k in keep} for r in latest]


@pytest.mark.skipif(not os.path.exists(RESULTS), reason="no benchmark results")
def test_readme_names_the_command_and_commits_of_the_results():
    readme, results = _read(README), _read(RESULTS)
    command = re.search(r"## Reproduce\s+```\s*\n(.+?)\n```", results).group(1).strip()
    assert f"`{command}`" in readme
    rendered = re.search(r"^\* git commit: ([0-9a-f]{40})", results, re.M).group(1)
    assert f"`{rendered[:7]}`" in readme, f"README does not name the rendering commit {rendered[:7]}"
    trained = re.search(r"^\* commits the runs were trained at: (.+)$", results, re.M).group(1)
    for sha in set(re.findall(r"\b([0-9a-f]{40})\b", trained)):
        assert f"`{sha[:7]}`" in readme, f"README does not name the training commit {sha[:7]}"


@pytest.mark.skipif(not os.path.exists(RESULTS), reason="no benchmark results")
def test_readme_demo_table_is_the_benchmark_seed_0():
    # make demo (SEED 0) and the benchmark's seed 0 run the same configs: same numbers.
    columns = ["mask AP", "APr", "APc", "APf", "box AP"]
    demo = _table_with(_read(README), ["run"] + columns, None)
    per_seed = _table_with(_read(RESULTS), ["seed"] + columns, "base_softmax_rfs")
    seed0 = {r["method"]: r for r in per_seed if r["seed"] == "0"}
    assert len(demo) == 4
    for row in demo:
        bench = seed0[row["run"].replace("decoupled_", "", 1)]
        assert {c: row[c] for c in columns} == {c: bench[c] for c in columns}, row["run"]
