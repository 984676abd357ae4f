"""README.md and docs/*.md stay true: the paths, links, commands and config keys they name exist,
the methods table matches the configs on disk, and every results table equals its source file."""

import glob
import os
import re
import shlex
from collections import Counter
from typing import Dict, List, Optional, Tuple

import pytest

from tests.markdown import tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
PAGES = [README] + DOCS
RESULTS = os.path.join(REPO, "benchmarks", "results", "longtail", "results.md")
LV_RESULTS = os.path.join(REPO, "benchmarks", "results", "longtail_lv", "results.md")
# the reported LVIS numbers, gathered from the papers and the peers' repositories
REFERENCE = os.path.join(REPO, "..", "shared", "notes", "reference-facts.md")
SETS = ("LVISv0.5", "LVISv1", "synthetic")
# the user's own script that docs/DATASETS.md writes: it takes tools/train_net.py's arguments
USER_TRAIN_NET = "train_mine.py"


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _page(name: str) -> str:
    return _read(os.path.join(REPO, name))


def _rel(path: str) -> str:
    return os.path.relpath(path, REPO)


def _table_with(
    markdown: str, columns: List[str], first: Optional[str], key: str = "method"
) -> List[Dict[str, str]]:
    """The first table that has ``columns`` and whose first row's ``key`` is ``first`` (any:
    None)."""
    for rows in tables(markdown):
        if rows and all(c in rows[0] for c in columns) and first in (None, rows[0].get(key)):
            return rows
    raise AssertionError(f"no table with columns {columns} starting at {first!r}")


def test_table_parser_reads_cells_by_header():
    text = "x\n| method | AP |\n|---|---:|\n| a | 1.0 |\n| b | 2.0 |\n\n| k |\n|---|\n| z |\n"
    assert tables(text) == [
        [{"method": "a", "AP": "1.0"}, {"method": "b", "AP": "2.0"}],
        [{"k": "z"}],
    ]


# ---------------------------------------------------------------------------------------------
# paths and links

_ROOTS = r"(?:benchmarks|configs|tools|ltdet|tests|docs)"


def _named_paths(text: str) -> set:
    """Repository paths written in backticks or after --config-file (relative to the root)."""
    paths = set(re.findall(rf"`({_ROOTS}/[^`\s]*)`", text))
    paths |= set(re.findall(rf"--config-file ({_ROOTS}/\S+\.yaml)", text))
    return paths


def _links(text: str) -> List[str]:
    """Markdown link and image targets, without external URLs."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+://", t)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set:
    body = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", body, re.M)}


def test_slug_follows_github_anchors():
    assert _slug("Speed and memory") == "speed-and-memory"
    assert (
        _slug("Two-component weights with a held-out base model")
        == "two-component-weights-with-a-held-out-base-model"
    )
    assert _slug("The fixes in `ltdet/compat.py`") == "the-fixes-in-ltdetcompatpy"


def _braces(path: str) -> List[str]:
    """Shell brace expansion of one ``{a,b}`` group: ``configs/{x,y}/d`` -> both paths."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if not m:
        return [path]
    return [
        e
        for alt in m.group(1).split(",")
        for e in _braces(path[: m.start()] + alt + path[m.end() :])
    ]


def test_brace_expansion():
    assert _braces("configs/{a,b}/d/{x,y}.yaml") == [
        "configs/a/d/x.yaml",
        "configs/a/d/y.yaml",
        "configs/b/d/x.yaml",
        "configs/b/d/y.yaml",
    ]
    assert _braces("configs/a.yaml") == ["configs/a.yaml"]


def test_every_path_and_link_of_the_docs_exists():
    recipes = _recipes(_page("docs/METHODS.md"))
    missing, checked = [], 0
    for page in PAGES:
        text = _read(page)
        for p in sorted(_named_paths(text)):
            checked += 1
            expanded = [p.replace("<recipe>", r) for r in recipes] if "<recipe>" in p else [p]
            expanded = [e for x in expanded for e in _braces(x)]
            missing += [
                f"{_rel(page)}: {e}"
                for e in expanded
                if not os.path.exists(os.path.join(REPO, e.rstrip("/")))
            ]
        for link in _links(text):
            checked += 1
            target, _, anchor = link.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
            if not os.path.exists(path):
                missing.append(f"{_rel(page)}: link {link}")
            elif anchor and path.endswith(".md") and anchor not in _anchors(_read(path)):
                missing.append(f"{_rel(page)}: link {link} (no such heading)")
    assert checked > 80, checked  # the patterns still match the pages' style
    assert not missing, f"the docs name paths, links or headings that do not exist: {missing}"


def test_readme_links_every_docs_page():
    linked = {
        os.path.normpath(os.path.join(REPO, t.partition("#")[0])) for t in _links(_read(README))
    }
    assert set(DOCS) <= linked, sorted(_rel(d) for d in set(DOCS) - linked)


# ---------------------------------------------------------------------------------------------
# commands


def _commands(text: str) -> List[Tuple[str, List[str]]]:
    """Every ``python X.py ...`` or ``python -m pkg.mod ...`` command, in code blocks (with line
    continuations) and in inline code, as (script, arguments); a module becomes its file
    (``pkg/mod.py``, or ``pkg/mod/__init__.py`` for a package); ``<placeholders>`` become one
    token."""
    found = []
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    lines = [line for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [" ".join(c.split()) for c in re.findall(r"`(python [^`]+)`", inline)]
    for line in lines:
        line = line.split(" #")[0].strip()
        m = re.match(r"(?:\S+=\S+ )*python3? (?:-m (\S+)|(\S+\.py))(.*)$", line)
        if m:
            script = m.group(2)
            if m.group(1):
                module = m.group(1).replace(".", "/")
                package = os.path.isdir(os.path.join(REPO, module))
                script = f"{module}/__init__.py" if package else f"{module}.py"
            args = re.sub(r"<[^>]*>", "PLACEHOLDER", m.group(3))
            found.append((script, shlex.split(args)))
    return found


def _all_commands() -> List[Tuple[str, str, List[str]]]:
    return [(_rel(p), script, args) for p in PAGES for script, args in _commands(_read(p))]


def test_command_parser_reads_blocks_and_inline_code():
    text = (
        "```bash\n# a comment\npython tools/x.py --a 1 \\\n    --b <some thing>  # why\n```\n"
        "and `python benchmarks/y.py --c\n2`, `python -m benchmarks.longtail --d`.\n"
    )
    assert _commands(text) == [
        ("tools/x.py", ["--a", "1", "--b", "PLACEHOLDER"]),
        ("benchmarks/y.py", ["--c", "2"]),
        ("benchmarks/longtail/__init__.py", ["--d"]),
    ]


def test_every_command_names_a_script_and_options_it_has():
    bad, seen = [], 0
    for page, script, args in _all_commands():
        if script in ("tools/train_net.py", USER_TRAIN_NET):
            continue  # detectron2's parser: test_train_net_commands_parse_and_merge
        seen += 1
        path = os.path.join(REPO, script)
        if not os.path.isfile(path):
            bad.append(f"{page}: {script} does not exist")
            continue
        for flag in (a.split("=")[0] for a in args if a.startswith("--")):
            if not _defines(path, flag):
                bad.append(f"{page}: {script} has no option {flag}")
    assert seen >= 10, seen
    assert not bad, bad


def test_make_bash_and_pytest_commands_name_what_exists():
    makefile = _read(os.path.join(REPO, "Makefile"))
    bad, seen = [], 0
    for page in PAGES:
        text = _read(page)
        code = " ".join(re.findall(r"```[a-z]*\n(.*?)```", text, re.S))
        code += " " + " ".join(re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)))
        for target in re.findall(r"(?:^|\s)make (\w+)", code):
            seen += 1
            if not re.search(rf"^{target}:", makefile, re.M):
                bad.append(f"{_rel(page)}: make {target}")
        for path in re.findall(r"(?:^|\s)bash (\S+\.sh|\.ci/run)", code) + re.findall(
            r"(?:^|\s)pytest((?: tests/\S+)+)", code
        ):
            for p in path.split():
                seen += 1
                if not os.path.exists(os.path.join(REPO, p)):
                    bad.append(f"{_rel(page)}: {p}")
    assert seen >= 8, seen
    assert not bad, bad


def _defines(script: str, flag: str) -> bool:
    """Whether the script, or a module beside or below it (a shared argument helper), defines
    ``flag``."""
    folder = os.path.dirname(script)
    sources = [script] + sorted(glob.glob(os.path.join(folder, "**", "*.py"), recursive=True))
    return any(f'"{flag}"' in _read(f) or f"'{flag}'" in _read(f) for f in sources)


_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def _detectron2_argv(argv: List[str]) -> List[str]:
    """``argv`` without the options that tools/train_net.py adds to detectron2's parser (each
    must be defined there), so that detectron2's own parser reads the rest."""
    from detectron2.engine import default_argument_parser

    known = {s for a in default_argument_parser()._actions for s in a.option_strings}
    out, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=")[0]
        if argv[i].startswith("--") and flag not in known:
            assert _defines(os.path.join(REPO, "tools", "train_net.py"), flag), (
                f"tools/train_net.py has no option {flag}"
            )
            i += 1
            while (
                i < len(argv)
                and not argv[i].startswith("--")
                and not _CONFIG_KEY.fullmatch(argv[i])
            ):
                i += 1
            continue
        out.append(argv[i])
        i += 1
    return out


def test_train_net_commands_parse_and_merge():
    """Each train_net command of the docs: detectron2's parser takes its options, its config file
    exists and merges, and every KEY VALUE after it is a config key that takes that value."""
    from detectron2.config import get_cfg
    from detectron2.engine import default_argument_parser

    from ltdet.config import add_ltdet_config, merge_config

    commands = [
        (p, a) for p, s, a in _all_commands() if s in ("tools/train_net.py", USER_TRAIN_NET)
    ]
    assert len(commands) >= 15, len(commands)
    for page, argv in commands:
        args = default_argument_parser().parse_args(_detectron2_argv(argv))
        assert args.config_file, (page, argv)
        cfg = get_cfg()
        add_ltdet_config(cfg)
        merge_config(cfg, os.path.join(REPO, args.config_file), args.opts)
        assert args.num_gpus * args.num_machines >= 1


# ---------------------------------------------------------------------------------------------
# methods and configs


def _recipes(text: str) -> List[str]:
    """The decoupled recipes named by docs/METHODS.md's configs table."""
    rows = [
        r for rows in tables(text) for r in rows if r.get("recipe", "").startswith("decoupled:")
    ]
    assert len(rows) == 2, rows
    names = []
    for r in rows:
        listed = r["recipe"].split(":", 1)[1].split("(")[0]
        names += [n.strip() for n in listed.split(",") if n.strip()]
    return names


def _recipes_on_disk(version: str) -> set:
    folder = os.path.join(REPO, "configs", version, "decoupled")
    return {f[:-5] for f in os.listdir(folder) if f.endswith(".yaml") and not f.startswith("Base-")}


def test_methods_page_names_every_recipe_of_every_set():
    recipes = set(_recipes(_page("docs/METHODS.md")))
    for version in SETS:
        assert _recipes_on_disk(version) == recipes, (
            version,
            sorted(_recipes_on_disk(version) ^ recipes),
        )


def _readme_methods() -> List[Dict[str, str]]:
    return _table_with(_read(README), ["method", "config", "the recipe sets", "paper"], None)


def test_readme_methods_table_links_every_recipe_and_its_paper():
    rows = _readme_methods()
    linked = {}
    for r in rows:
        m = re.fullmatch(r"\[(\w+)\]\((configs/LVISv1/decoupled/(\w+)\.yaml)\)", r["config"])
        assert m and m.group(1) == m.group(3), r["config"]
        linked[m.group(1)] = m.group(2)
        assert re.search(r"\]\(https://arxiv\.org/abs/\d{4}\.\d{4,5}\)", r["paper"]), r
    for version in SETS:
        assert set(linked) == _recipes_on_disk(version), (
            version,
            sorted(set(linked) ^ _recipes_on_disk(version)),
        )


def _merged(config_file: str):
    from detectron2.config import get_cfg

    from ltdet.config import add_ltdet_config, merge_config

    cfg = get_cfg()
    add_ltdet_config(cfg)
    return merge_config(cfg, os.path.join(REPO, config_file))


def _lookup(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_readme_methods_table_says_what_each_config_sets():
    """'the recipe sets' holds for the recipe in every set, and no other recipe of the table turns
    on a method that the row does not name (a BALMS row without META would fail)."""
    rows = _readme_methods()
    switches = ("LTDET.META.ENABLED", "LTDET.TWO_COMPONENT.ENABLED", "LTDET.M2M.ENABLED")
    for r in rows:
        recipe = re.match(r"\[(\w+)\]", r["config"]).group(1)
        pairs = [p.split() for p in re.findall(r"`([^`]+)`", r["the recipe sets"])]
        assert pairs and all(len(p) == 2 for p in pairs), r
        for version in SETS:
            cfg = _merged(f"configs/{version}/decoupled/{recipe}.yaml")
            assert cfg.LTDET.DECOUPLED.ENABLED, (version, recipe)
            for key, value in pairs:
                assert str(_lookup(cfg, key)) == value, (version, recipe, key)
            named = {k for k, _ in pairs}
            for switch in switches:
                if switch not in named:
                    assert not _lookup(cfg, switch), (version, recipe, switch)


def test_readme_base_models_use_repeat_factor_sampling():
    text = _read(README)
    assert "`DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler`" in text
    for name in ("base_softmax_rfs_R50_FPN", "base_sigmoid_rfs_R50_FPN"):
        assert f"(configs/LVISv1/{name}.yaml)" in text
        for version in ("LVISv0.5", "LVISv1"):
            cfg = _merged(f"configs/{version}/{name}.yaml")
            assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
            assert not cfg.LTDET.DECOUPLED.ENABLED


# ---------------------------------------------------------------------------------------------
# results tables


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


def _recorded_command(results: str) -> str:
    command = re.search(r"## Reproduce\s+```\s*\n(.+?)\n```", results).group(1).strip()
    # recorded before the benchmarks became modules: the same command, run as one today
    return re.sub(r"python benchmarks/(\w+)\.py", r"python -m benchmarks.\1", command)


@pytest.mark.parametrize("path", [RESULTS, LV_RESULTS], ids=["default", "lv"])
def test_docs_name_the_command_and_commits_of_the_results(path):
    """BENCHMARKS.md names the command of each preset's table, the commit that rendered it and
    every commit its runs were trained at; the README names the headline table's command."""
    if not os.path.exists(path):
        pytest.skip("no benchmark results")
    results = _read(path)
    command = _recorded_command(results)
    if path == RESULTS:
        assert f"`{command}`" in _read(README)
    benchmarks = _page("docs/BENCHMARKS.md")
    assert f"`{command}`" in benchmarks
    rendered = re.search(r"^\* git commit: ([0-9a-f]{40})", results, re.M).group(1)
    assert f"`{rendered[:7]}`" in benchmarks, f"BENCHMARKS.md does not name commit {rendered[:7]}"
    trained = re.search(r"^\* commits the runs were trained at: (.+)$", results, re.M).group(1)
    for sha in set(re.findall(r"\b([0-9a-f]{40})\b", trained)):
        assert f"`{sha[:7]}`" in benchmarks, f"BENCHMARKS.md does not name commit {sha[:7]}"


def test_demo_tables_are_the_committed_demo_output():
    # GETTING_STARTED.md's two demo tables (LVIS's protocol, hard negatives) are the committed
    # make demo output, table for table and cell for cell
    page = [t for t in tables(_page("docs/GETTING_STARTED.md")) if t and "run" in t[0]]
    demo = tables(_read(os.path.join(REPO, "benchmarks", "results", "demo", "results.md")))
    assert len(demo) == 2 and page[:2] == demo
    assert [r["run"] for r in demo[0]] == [
        "base_softmax_rfs",
        "decoupled_softmax",
        "decoupled_balanced_softmax",
        "decoupled_balms",
    ]


@pytest.mark.skipif(not os.path.exists(RESULTS), reason="no benchmark results")
def test_benchmark_seed_0_is_the_committed_demo_output():
    """docs/BENCHMARKS.md says the benchmark's seed 0 is `make demo`'s table to the last digit:
    the same recipes, seed and protocols, so the same numbers under each protocol."""
    demo = tables(_read(os.path.join(REPO, "benchmarks", "results", "demo", "results.md")))
    per_seed = [
        t for t in tables(_read(RESULTS)) if t and "seed" in t[0] and "status" in t[0]
    ]  # the per-seed tables, one per protocol, in the demo's order (LVIS's protocol first)
    assert len(demo) == len(per_seed) == 2
    names = {"decoupled_softmax": "softmax", "decoupled_balanced_softmax": "balanced_softmax"}
    names["decoupled_balms"] = "balms"
    metrics = ["mask AP", "APr", "APc", "APf", "box AP"]
    for shown, runs in zip(demo, per_seed):
        seed0 = {r["method"]: [r[m] for m in metrics] for r in runs if r["seed"] == "0"}
        for row in shown:
            assert [row[m] for m in metrics] == seed0[names.get(row["run"], row["run"])], row


@pytest.mark.skipif(not os.path.exists(REFERENCE), reason="no shared reference notes")
def test_reported_lvis_numbers_are_the_reference_ones():
    columns = ["AP", "APr", "APc", "APf"]
    shown = _table_with(_read(README), ["system (reported by)", "box AP"] + columns, None)
    reference = _table_with(_read(REFERENCE), ["system", "APbbox"] + columns, None)
    ours = Counter(tuple(r[c] for c in columns + ["box AP"]) for r in shown)
    theirs = Counter(tuple(r[c] for c in columns + ["APbbox"]) for r in reference)
    assert len(shown) == 7
    assert not ours - theirs, sorted(ours - theirs)
