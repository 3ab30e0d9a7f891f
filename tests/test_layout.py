"""The package's shape, checked mechanically: the import rules of STYLE.md, the public names of
each module, and the command-line flags against the docs that describe them."""

import ast
import re
import shlex
import sys
from pathlib import Path

import click
import pytest

import clip_smot
from clip_smot.cli import cli
from clip_smot.clip.scorer import SCORE_NAMES
from clip_smot.resnet.evaluate import RESNET_SCORES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(clip_smot.__file__).parent
# Dotted names below the package: "smot", "clip.fit", "common.files"; a folder's __init__.py is "clip".
MODULES = sorted(
    ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__").removesuffix("__init__")
    or "__init__" for p in PACKAGE.rglob("*.py") if "_data" not in p.parts
)
CORE = {"smot", "cam", "scores", "metrics"}  # the public core: tensors in, tensors out
FOLDERS = ("clip", "resnet", "common")  # the two tracks and their shared plumbing
COMMANDS = {"clip.fit", "clip.score", "clip.evaluate", "resnet.train", "resnet.evaluate"}  # what only the CLI runs


def _file(module: str) -> Path:
    path = PACKAGE / (module.replace(".", "/") + ".py")
    return path if path.exists() else PACKAGE / module.replace(".", "/") / "__init__.py"


def _layer(module: str) -> str:
    """core, common, clip, resnet, or top (cli, reproduce, __main__, __init__)."""
    head = module.split(".")[0]
    return "core" if module in CORE else head if head in FOLDERS else "top"


def _imports(module: str) -> list[tuple[str, int]]:
    """(name, level) of every import in a module, inside functions too: ``from .x import y`` is
    ("x", 1), ``from . import y`` is ("y", 1), ``import a.b`` is ("a.b", 0)."""
    out = []
    for node in ast.walk(ast.parse(_file(module).read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module:
                out.append((node.module, node.level))
            else:
                out += [(a.name, node.level) for a in node.names]
    return out


def _top_level(module: str) -> set[str]:
    """Third-party and standard-library packages a module imports (first dotted part)."""
    return {name.split(".")[0] for name, level in _imports(module) if level == 0} - {"__future__"}


def _package_imports(module: str) -> set[str]:
    """Modules of the package a module imports, as dotted names (``from clip_smot.clip import fit``
    is "clip.fit", ``from clip_smot.common.files import x`` is "common.files")."""
    assert all(level == 0 for _, level in _imports(module)), f"{module}: relative import (spell clip_smot.x out)"
    out = set()
    for node in ast.walk(ast.parse(_file(module).read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.removeprefix("clip_smot.") for a in node.names if a.name.startswith("clip_smot.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clip_smot":
            base = node.module.removeprefix("clip_smot").lstrip(".")
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                out.add(sub if sub in MODULES else base)
    return out - {"", "__version__"}


def test_the_tensor_modules_import_nothing_of_the_package():
    """STYLE.md: smot.py, scores.py and metrics.py import torch/numpy (metrics: scikit-learn) and
    nothing else of the package, so user code can take them alone."""
    allowed = {"smot": {"torch"}, "scores": {"torch", "numpy"}, "metrics": {"numpy", "sklearn"}}
    for module, third_party in allowed.items():
        assert _package_imports(module) == set(), module
        assert _top_level(module) - set(sys.stdlib_module_names) <= third_party, module


def test_click_only_in_the_cli_and_open_clip_only_in_clip_model():
    """open_clip: clip.model, which loads a model, and clip.config_checks, whose checks of a user's
    config read the installed open_clip's declarations (lazily, inside functions)."""
    for module in MODULES:
        top = _top_level(module)
        assert "click" not in top or module == "cli", module
        assert "open_clip" not in top or module in ("clip.model", "clip.config_checks"), module


def test_every_module_sits_in_its_folder():
    """The file list says the architecture: the core and the command line at the top, everything
    else in clip/, resnet/ or common/."""
    assert {m for m in MODULES if _layer(m) == "top"} == {"__init__", "__main__", "cli", "reproduce"}
    assert {m for m in MODULES if "." not in m} >= set(FOLDERS) | CORE


def test_imports_point_one_way_between_the_folders():
    """cli -> tracks -> common -> core: the core imports nothing of the package, common only the
    core, a track common and the core. The tracks stay apart; the one crossing is clip's CAM
    network, which loads a ResNet model file (resnet.networks) as fit's CAM provider."""
    allowed = {"core": {"core"}, "common": {"core", "common"}, "clip": {"core", "common", "clip"},
               "resnet": {"core", "common", "resnet"}}
    crossings = set()
    for module in MODULES:
        layer = _layer(module)
        for imported in _package_imports(module):
            if layer in allowed and _layer(imported) not in allowed[layer]:
                crossings.add((module, imported))
    assert crossings == {("clip.cam_network", "resnet.networks")}


def test_imports_point_one_way():
    """No module of the library imports the CLI or a command's module, and the package's imports
    (lazy ones too) have no cycle: a module never depends, even indirectly, on one that depends on it."""
    graph = {m: _package_imports(m) for m in MODULES}
    assert [m for m in MODULES if "cli" in graph[m]] == ["__main__"]
    # the library never imports its trainers; reproduce, the command that runs them as its stages, reads
    # their configs (a checkpoint it would resume against its stage's options)
    for command in COMMANDS:
        importers = [m for m in MODULES if command in graph[m]]
        assert importers == ["cli"] or (command in ("clip.fit", "resnet.train") and importers == ["cli", "reproduce"]), \
            command
    for start in MODULES:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                assert nxt != start, f"import cycle through {start}"
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)


def test_every_public_name_exists_and_cross_module_imports_are_public():
    """Each ``__all__`` names what the module defines, and a module takes from another only names
    in its ``__all__`` (so ``__all__`` is the real interface)."""
    import importlib

    library = [m for m in MODULES if m not in ("__init__", "__main__", "cli", *FOLDERS)]
    for module in library:
        mod = importlib.import_module(f"clip_smot.{module}")
        assert hasattr(mod, "__all__"), module
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert missing == [], (module, missing)
    for module in MODULES:
        for node in ast.walk(ast.parse(_file(module).read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clip_smot.")):
                continue
            source = node.module.removeprefix("clip_smot.")
            if source in library and source != "cli":
                public = importlib.import_module(node.module).__all__
                private = [a.name for a in node.names if a.name not in public]
                assert private == [], f"{module} imports {private} from {source}, not in its __all__"


def test_every_public_function_has_a_docstring_and_type_hints():
    """STYLE.md, habit 5: docstrings on public functions, type hints on public signatures. Each
    function and class a module's ``__all__`` names and the module defines has a docstring, and
    each such function a hint on every parameter and on its return."""
    import importlib
    import inspect

    library = [m for m in MODULES if m not in ("__init__", "__main__", "cli", *FOLDERS)]
    undocumented, unhinted = [], []
    for module in library:
        mod = importlib.import_module(f"clip_smot.{module}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or obj.__module__ != mod.__name__:
                continue
            if not inspect.getdoc(obj):
                undocumented.append(f"{module}.{name}")
            if inspect.isfunction(obj):
                sig = inspect.signature(obj)
                if sig.return_annotation is inspect.Signature.empty or any(
                        p.annotation is inspect.Parameter.empty for p in sig.parameters.values()):
                    unhinted.append(f"{module}.{name}")
    assert (undocumented, unhinted) == ([], [])


# --- the command line against the docs ---------------------------------------------------------

def _flags(command: str) -> set[str]:
    return {o for p in cli.commands[command].params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def _doc(name: str) -> str:
    return (ROOT / name).read_text()


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    return rows


def _cells(row: str) -> list[str]:
    """A markdown table row's cells: split at its pipes but escaped ones (``\\|``, which a code
    span in a cell needs: GitHub splits a cell at a bare ``|`` even there), those given back as ``|``."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def _backticked_flags(cell: str) -> list[str]:
    return re.findall(r"`(--[\w-]+)`", cell)


def test_fit_options_table_lists_every_fit_flag_with_its_default():
    rows = _table_rows(_doc("docs/fit.md"), "| option | default |")
    documented = [f for row in rows for f in _backticked_flags(row[0])]
    assert sorted(documented) == sorted(_flags("fit"))
    defaults = {o: p.default for p in cli.commands["fit"].params for o in p.opts}
    for row in rows:
        flags, cells = _backticked_flags(row[0]), [c.strip() for c in row[1].split(",")]
        if len(flags) != len(cells):
            continue  # a default described in words
        for flag, cell in zip(flags, cells):
            literal = re.fullmatch(r"`([\w./-]+)`|([\d.e-]+)", cell)
            if literal:
                want = defaults[flag]
                got = literal.group(1) or literal.group(2)
                assert (float(got) == want) if isinstance(want, (int, float)) else (got == want), (flag, cell, want)


def test_train_usage_block_lists_every_train_flag_and_its_choices():
    usage = re.search(r"```\n(clip-smot train .*?)```", _doc("docs/resnet.md"), re.S).group(1)
    assert set(re.findall(r"--[\w-]+", usage)) == _flags("train")
    for param in cli.commands["train"].params:
        if isinstance(param.type, click.Choice):
            listed = re.search(rf"{param.opts[0]} ([\w|]+)", usage).group(1).split("|")
            assert listed == list(param.type.choices), param.opts[0]


def test_score_page_lists_every_score_flag():
    section = _doc("docs/score.md").split("## `clip-smot score`")[1].split("### The scores")[0]
    assert set(re.findall(r"`(--[\w-]+)", section)) == _flags("score")


def test_export_section_lists_every_export_flag():
    section = _doc("docs/fit.md").split("## `clip-smot export`")[1].split("\n## ")[0]
    spans = " ".join(re.findall(r"`([^`]*)`", section))
    assert set(re.findall(r"--[\w-]+", spans)) == _flags("export")


def test_the_eval_sections_list_every_eval_flag():
    clip = _doc("docs/score.md").split("## `clip-smot eval --prompt`")[1].split("\n## ")[0]
    resnet = _doc("docs/resnet.md").split("## `clip-smot eval --checkpoint`")[1].split("\n## ")[0]
    spans = " ".join(re.findall(r"`([^`]*)`", clip + resnet)) + " ".join(re.findall(r"```bash\n(.*?)```", clip, re.S))
    assert _flags("eval") <= set(re.findall(r"--[\w-]+", spans))  # (they name fit's --data too)


def _doc_pages() -> list[str]:
    """The README, docs/*.md, data_lists/*.md and benchmarks/README.md."""
    pages = [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "data_lists").glob("*.md"))]
    return ["README.md", *(str(p.relative_to(ROOT)) for p in pages), "benchmarks/README.md"]


def _inline_spans(text: str) -> list[str]:
    """The inline code spans of a markdown page (code blocks left out), white space made one space
    (a span may wrap at a line's end)."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))]


def _doc_commands():
    """Every ``clip-smot CMD ...`` (and ``torchrun ... -m clip_smot CMD``) line of a ```bash block in
    the README and docs, and every inline code span that is such a command (`clip-smot fit --shots 16`)."""
    for name in _doc_pages():
        for block in re.findall(r"```bash\n(.*?)```", _doc(name), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0]
                m = re.search(r"(?:^|\s)(?:clip-smot|-m clip_smot) (\w+)(.*)", line)
                if m and not line.lstrip().startswith("#"):
                    yield name, m.group(1), m.group(2)
        for span in _inline_spans(_doc(name)):
            if m := re.match(r"(?:clip-smot|torchrun .*-m clip_smot) (\w+)(.*)", span):
                yield name, m.group(1), m.group(2)


def test_every_command_in_the_docs_uses_real_flags_and_choices():
    commands = list(_doc_commands())
    assert len(commands) > 30
    for doc, command, rest in commands:
        assert command in cli.commands, (doc, command)
        params = {o: p for p in cli.commands[command].params for o in (*p.opts, *p.secondary_opts)}
        words = shlex.split(rest)
        for i, word in enumerate(words):
            if not word.startswith("--"):
                continue
            flag = word.split("=")[0]
            assert flag in params, f"{doc}: clip-smot {command} has no {flag}"
            param = params[flag]
            if isinstance(param.type, click.Choice) and i + 1 < len(words) and "$" not in words[i + 1]:
                assert words[i + 1] in param.type.choices, f"{doc}: clip-smot {command} {flag} {words[i + 1]}"
            if flag == "--scores":  # each score is one of its track's
                known = RESNET_SCORES if "--checkpoint" in words else SCORE_NAMES
                unknown = set(words[i + 1].split(",")) - set(known)
                assert not unknown, f"{doc}: clip-smot {command} --scores {words[i + 1]}"


def _script_flags(script: Path) -> set[str]:
    """The ``--flags`` a benchmark script's argparse parser declares, read from its source
    (``--no-X`` too for a ``BooleanOptionalAction``, also one bound to a name first)."""
    tree = ast.parse(script.read_text())
    boolean = {"argparse.BooleanOptionalAction"} | {
        t.id for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and ast.unparse(node.value) == "argparse.BooleanOptionalAction"
        for t in node.targets if isinstance(t, ast.Name)}
    flags = {"--help"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
            flags.update(names)
            if any(k.arg == "action" and ast.unparse(k.value) in boolean for k in node.keywords):
                flags.update("--no-" + n[2:] for n in names)
    return flags


def test_every_benchmark_command_in_the_docs_uses_the_scripts_flags():
    """``python benchmarks/SCRIPT.py --flag ...`` in a code block or an inline span of the README
    and docs: the script exists and its parser has each flag (a renamed flag left a command that
    stops with argparse's usage error)."""
    commands = []
    for name in _doc_pages():
        text = _doc(name)
        lines = [line.split(" #")[0] for block in re.findall(r"```\w*\n(.*?)```", text, re.S)
                 for line in block.replace("\\\n", " ").splitlines()]
        for line in [*lines, *_inline_spans(text)]:
            commands += [(name, *m) for m in re.findall(r"python3? benchmarks/(\w+\.py)((?: [^`]*)?)$", line)]
    assert len(commands) >= 10
    for doc, script, rest in commands:
        assert (ROOT / "benchmarks" / script).is_file(), (doc, script)
        given = {w.split("=")[0] for w in rest.split() if w.startswith("--")}
        unknown = given - _script_flags(ROOT / "benchmarks" / script)
        assert not unknown, f"{doc}: benchmarks/{script} has no {sorted(unknown)}"


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation but ``-`` and ``_``
    dropped, spaces made ``-``; a repeated one gets ``-1``, ``-2``, ..."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"(?m)^#+ (.*)$", re.sub(r"```.*?```", "", text, flags=re.S)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def test_the_docs_links_anchors_and_named_files_exist():
    """Every relative link of the README and docs leads to a file that exists, and its #anchor to a
    heading of that page; every repository path they name in passing (`docs/score.md`,
    `tests/test_metrics.py`, `benchmarks/RESULTS.md`) exists: a file renamed or a heading reworded
    left the reader a dead end."""
    links = named = 0
    for name in _doc_pages():
        text = _doc(name)
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            page = (ROOT / name).parent / path if path else ROOT / name
            assert page.exists(), f"{name}: the link {target} leads to no file"
            assert not anchor or anchor in set(_anchors(page.read_text())), f"{name}: {target} names no heading"
            links += 1
        # (not one under ~/.cache/clip_smot/..., nor $CLIP_SMOT_CACHE/...: those are the user's folders)
        repository = r"(?<![\w./~$-])((?:docs|benchmarks|data_lists|prompts|tests|clip_smot|\.ci)/[\w./-]*\w)"
        for path in re.findall(repository, text):
            # (clip_smot/_data/X is an installed wheel's name of the repository's X: pyproject.toml)
            path = path.removeprefix("clip_smot/_data/")
            assert (ROOT / path).exists(), f"{name}: names {path}, which is not in the repository"
            named += 1
    assert links >= 20 and named >= 100, (links, named)


def test_every_table_row_of_the_docs_has_its_headers_cells():
    """A bare ``|`` inside a code span still ends a table cell on GitHub, and cells past the header's
    count are dropped: docs/score.md's ViM formula `energy - alpha * |P_res x|` showed as
    "energy - alpha *", the rest of its row gone. Every row of every table of the docs has as many
    cells as its header."""
    rows = 0
    for name in [*_doc_pages(), "benchmarks/RESULTS.md"]:
        lines = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), _doc(name), flags=re.S).splitlines()
        for i, line in enumerate(lines[:-1]):
            if line.startswith("|") and re.fullmatch(r"\|[-:| ]+\|", lines[i + 1].strip()) and \
                    not (i and lines[i - 1].startswith("|")):
                width = len(_cells(line))
                for j in range(i + 2, len(lines)):
                    if not lines[j].startswith("|"):
                        break
                    cells = len(_cells(lines[j]))
                    assert cells == width, f"{name}:{j + 1}: {cells} cells, header {width}"
                    rows += 1
    assert rows > 200, rows


def test_the_reproduce_page_lists_every_reproduce_flag():
    rows = _table_rows(_doc("docs/reproduce.md"), "| option | meaning |")
    documented = {f for row in rows for f in _backticked_flags(row[0])}
    assert documented == _flags("reproduce")


@pytest.mark.parametrize("command", ["fit", "score", "eval", "train", "export", "reproduce"])
def test_every_command_has_help(command):
    from click.testing import CliRunner

    res = CliRunner().invoke(cli, [command, "--help"])
    assert res.exit_code == 0 and "Usage: " in res.output
    for flag in _flags(command):
        assert flag in res.output, (command, flag)


def test_the_version_is_the_same_everywhere():
    """pyproject.toml's version (what pip installs), ``clip_smot.__version__`` (written into every
    prompt and model file) and ``clip-smot --version`` are one number."""
    from click.testing import CliRunner

    declared = re.search(r'(?m)^version = "([^"]+)"', _doc("pyproject.toml")).group(1)
    assert clip_smot.__version__ == declared
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0 and res.output == f"clip-smot, version {declared}\n"


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # (Python 3.10: tomli, which pytest needs there)
        import tomli as tomllib
    return tomllib.loads(_doc("pyproject.toml"))


# The folders whose files bundled_file() reads, as the wheel's packages that carry them
DATA_PACKAGES = {"clip_smot._data.prompts": "prompts", "clip_smot._data.data_lists": "data_lists"}


def test_pyproject_ships_every_package_and_every_bundled_file():
    """pyproject.toml lists the packages by hand (so that prompts/ and data_lists/ ship as
    clip_smot/_data/): a folder of modules left off that list, or a file of those two folders that
    no package-data pattern matches (or one in a sub-folder: the patterns do not recurse), is
    missing from the wheel, where an import fails, or a list is 'missing from this installation',
    only for a user who did not clone the repository."""
    import fnmatch

    setup = _pyproject()["tool"]["setuptools"]
    source = ROOT / "clip_smot"
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in source.rglob("*.py")}
    assert {"clip_smot", "clip_smot.clip", "clip_smot.resnet", "clip_smot.common"} <= folders
    assert sorted(setup["packages"]) == sorted(folders | set(DATA_PACKAGES))
    assert setup["package-dir"] == DATA_PACKAGES
    for package, folder in DATA_PACKAGES.items():
        entries = sorted((ROOT / folder).iterdir())
        assert entries and all(p.is_file() for p in entries), entries
        unmatched = [p.name for p in entries
                     if not any(fnmatch.fnmatch(p.name, pattern) for pattern in setup["package-data"][package])]
        assert unmatched == [], (package, unmatched)


def test_no_message_or_help_points_at_a_repository_path():
    """What the package prints (errors, notes, --help) is read by users of the wheel too, who have
    no docs/, benchmarks/, tests/ or .ci/, and whose prompts/ and data_lists/ are
    clip_smot/_data/ (a message names those through bundled_file(), the path found). String
    constants outside docstrings, f-string pieces included, name none of them."""
    repository = re.compile(r"(?<![\w.])(docs|benchmarks|tests|\.ci|prompts|data_lists)/|README\.md")
    found = []
    for module in MODULES:
        tree = ast.parse(_file(module).read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and ast.get_docstring(node) is not None}
        found += [f"{module}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and repository.search(node.value)]
    assert found == []


def test_the_paper_averages_quoted_in_the_docs_are_those_of_paper_tables_csv():
    """README's "The paper's tables" and docs/fit.md's Table 8 targets quote the paper's averages
    by hand; data_lists/paper_tables.csv is the transcription reproduce writes beside ours. A
    number changed in one place only would set a reader's target apart from the table's."""
    import csv

    with open(ROOT / "data_lists" / "paper_tables.csv", newline="") as f:
        paper = {(r["table"], r["row"], r["metric"]): r["value"] for r in csv.DictReader(f)
                 if r["ood_set"] == "average"}
    # (README's table column, its "ID" and "method" cells) -> paper_tables.csv's (table, row)
    readme_rows = {
        ("8", "ImageNet-1k, 16-shot, CLIP ViT-B-16", "CoOp"): ("8", "CoOp"),
        ("8", "ImageNet-1k, 16-shot, CLIP ViT-B-16", "SMOT"): ("8", "SMOT"),
        ("8", "ImageNet-1k, zero-shot CLIP", "MCM"): ("8", "MCM"),
        ("1/2", "CIFAR-10, ResNet-18", "CE, MSP"): ("2", "MSP"),
        ("1/2", "CIFAR-10, ResNet-18", "SMOT, MSP"): ("2", "SMOT"),
        ("1/3", "CIFAR-100, ResNet-18", "SMOT, MSP"): ("3", "SMOT"),
        ("4", "ImageNet-200, ResNet-18", "SMOT, MSP"): ("4", "SMOT"),
    }
    rows = _table_rows(_doc("README.md"), "| table | ID | method | avg FPR95 | avg AUROC |")
    assert {tuple(r[:3]) for r in rows} == set(readme_rows)
    for table, id_set, method, fpr95, auroc in rows:
        key = readme_rows[(table, id_set, method)]
        assert (fpr95, auroc) == (paper[(*key, "fpr95")], paper[(*key, "auroc")]), (table, method)
        if table.startswith("1/"):  # Table 1's cells are those of Table 2 (CIFAR-10) and Table 3 (CIFAR-100)
            t1 = ("1", id_set.split(",")[0] + (" CE" if method.startswith("CE") else " SMOT"))
            assert (fpr95, auroc) == (paper[(*t1, "fpr95")], paper[(*t1, "auroc")]), (table, method)
    fit_rows = _table_rows(_doc("docs/fit.md"), "| method | avg FPR95 (%) | avg AUROC (%) |")
    fit_names = {"SMOT, 16-shot": "SMOT", "CoOp, 16-shot": "CoOp", "MCM, zero-shot": "MCM"}
    assert sorted(r[0] for r in fit_rows) == sorted(fit_names)
    for method, fpr95, auroc in fit_rows:
        assert (fpr95, auroc) == (paper[("8", fit_names[method], "fpr95")], paper[("8", fit_names[method], "auroc")])


def test_the_file_formats_name_the_keys_and_columns_the_files_hold(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """README's "File formats" lists the metadata keys of prompt.safetensors and model.safetensors
    and the columns of metrics.csv, docs/resnet.md's model-file table and docs/score.md's outputs
    table the same: the files the code writes hold those keys and columns, no more, no fewer, in
    that order for the CSV (a key added or renamed in one place only misled a reader of the file)."""
    import numpy as np
    from helpers import make_prompt
    from safetensors import safe_open

    from clip_smot.clip.model import load_clip
    from clip_smot.common.reports import write_reports
    from clip_smot.resnet.networks import build_network, save_model

    formats = _doc("README.md").split("## File formats")[1].split("\n## ")[0]

    def listed(start: str, end: str) -> list[str]:
        """The backticked names between ``start`` and ``end``, those in parentheses left out."""
        part = formats.split(start, 1)[1].split(end, 1)[0]
        while re.search(r"\([^()]*\)", part):
            part = re.sub(r"\([^()]*\)", "", part)
        return sorted(re.findall(r"`(\w+)`", part))

    def metadata(path: Path) -> list[str]:
        with safe_open(str(path), "pt") as f:
            return sorted(f.metadata())

    make_prompt(tmp_path / "prompt.safetensors", load_clip(tiny_clip_config, tiny_clip_checkpoint))
    save_model(tmp_path / "model.safetensors", build_network("resnet_tiny", 3, 16), arch="resnet_tiny",
               classnames=["a", "b", "c"], input_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    assert listed("string metadata", "Loading checks") == metadata(tmp_path / "prompt.safetensors")
    assert listed("and metadata", "See [docs/resnet.md]") == metadata(tmp_path / "model.safetensors")
    table = _table_rows(_doc("docs/resnet.md"), "| key | value |")
    keys = sorted(k for row in table for k in re.findall(r"`(\w+)`", row[0]))
    assert keys == metadata(tmp_path / "model.safetensors")

    write_reports(tmp_path / "eval", {"msp": np.array([0.9, 0.8])}, {"a": {"msp": np.array([0.1, 0.85])}})
    header = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()[0]
    readme = re.search(r"`metrics\.csv` \(`([^`]+)`", formats).group(1)
    score_md = re.search(r"\| `metrics\.csv` \| columns `([^`]+)`", _doc("docs/score.md")).group(1)
    assert re.sub(r"\s", "", readme) == re.sub(r"\s", "", score_md) == header  # (a span may wrap)


def test_the_score_tables_list_each_tracks_scores():
    """The scores each page defines are those ``--scores`` takes: docs/score.md's table the CLIP
    track's, docs/resnet.md's the ResNet track's (its "fitted" column the scores fitted on ID-train
    features), docs/method.md §4 both; README's scores.csv list and docs/score.md's ``--scores``
    item those of ``score`` (the fitted ones are eval's only)."""
    from clip_smot.clip.scorer import FITTED_SCORES

    def first_column(doc: str, header: str) -> list[str]:
        return sorted(re.fullmatch(r"`([\w-]+)`", row[0]).group(1) for row in _table_rows(_doc(doc), header))

    assert first_column("docs/score.md", "| score | formula |") == sorted(SCORE_NAMES)
    resnet = _table_rows(_doc("docs/resnet.md"), "| score | what | fitted on ID training features? |")
    assert first_column("docs/resnet.md", "| score | what | fitted") == sorted(RESNET_SCORES)
    assert sorted(row[0].strip("`") for row in resnet if "yes" in row[2]) == sorted(FITTED_SCORES)
    assert first_column("docs/method.md", "| score | definition | source |") == sorted({*SCORE_NAMES, *RESNET_SCORES})
    scoring = sorted(set(SCORE_NAMES) - set(FITTED_SCORES))
    readme = _doc("README.md").split("**`scores.csv`**")[1].split("\n- **")[0]
    assert sorted(re.findall(r"`([\w-]+)`", readme.split("any of", 1)[1].split(")", 1)[0])) == scoring
    item = _doc("docs/score.md").split("- `--scores`: comma-separated, any of", 1)[1].split("(the fitted", 1)[0]
    assert sorted(re.findall(r"`([\w-]+)`", item)) == scoring


def test_the_readme_layout_names_every_module():
    layout = _doc("README.md").split("## Layout")[1].split("```")[1]
    listed, folder = [], None
    for line in layout.splitlines():
        if m := re.match(r"^  (\w+)/ ", line + " "):
            folder = m.group(1)
            listed.append(folder)
        elif m := re.match(r"^    (\w+)\.py ", line):
            listed.append(f"{folder}.{m.group(1)}")
        elif m := re.match(r"^  (\w+)\.py ", line):
            listed.append(m.group(1))
    assert sorted(listed) == [m for m in MODULES if not m.startswith("__")]
    for module in MODULES:  # and each module says its job in its first docstring line
        assert ast.get_docstring(ast.parse(_file(module).read_text())), module


def test_the_readme_core_example_runs():
    """README's "Using the core in your own loop", run as written on a tiny ResNet: the names it
    imports exist and the loss it builds backpropagates into the model."""
    import torch

    from clip_smot.resnet.networks import build_network

    code = re.search(r"## Using the core in your own loop\n\n```python\n(.*?)```", _doc("README.md"), re.S).group(1)
    torch.manual_seed(0)
    model = build_network("resnet_tiny", 10, 16)
    base_model, mean, std = build_network("resnet_tiny", 10, 16), [0.5] * 3, [0.25] * 3  # the CAM network
    x, y = torch.rand(4, 3, 16, 16), torch.arange(4)
    scope = {"x": x, "y": y, "model": model, "norm": lambda im: (im - 0.5) / 0.25,
             "base_model": base_model, "mean": mean, "std": std}
    exec(code, scope)
    assert scope["cams"].shape == (4, 16, 16) and 0 <= scope["cams"].min() <= scope["cams"].max() <= 255
    assert scope["t"].shape == (4,) and 0 <= scope["t"].min() <= scope["t"].max() <= 255
    # Eq. 7 by hand: a pixel whose CAM reaches its image's threshold is black in all three channels
    hidden = scope["cams"] >= scope["t"][:, None, None]  # [B, H, W]
    assert torch.equal(scope["x_masked"], torch.where(hidden[:, None], 0.0, x))
    assert scope["loss"].ndim == 0 and torch.isfinite(scope["loss"])
    scope["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # (docs/score.md asks for 8 workers)
def test_the_python_examples_of_the_docs_run(tmp_path, monkeypatch, tiny_clip_config, tiny_clip_checkpoint):
    """Every ```python block of docs/*.md, run as written but on the CPU with the tiny CLIP (for
    ViT-B-16 / openai) and a tiny prompt and images at the paths the examples name."""
    import shutil

    import torch
    from PIL import Image

    import clip_smot.clip.model as cm
    from clip_smot.clip.prompt_file import save_prompt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache"))
    shutil.copy(tiny_clip_checkpoint, tmp_path)  # a prompt's checkpoint file is looked for in the current folder
    load_clip = cm.load_clip
    monkeypatch.setattr(cm, "load_clip", lambda *args, **kwargs: load_clip(tiny_clip_config, tiny_clip_checkpoint))
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint)
    g = torch.Generator().manual_seed(0)
    for path in ("prompt.safetensors", "runs/smot-in1k/prompt.safetensors"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        text = torch.nn.functional.normalize(torch.randn(3, 32, generator=g), dim=-1)
        save_prompt(path, torch.randn(4, 32, generator=g), text, clip.identity(), 4, "end", False,
                    ["cat", "dog", "tree frog"], {})
    Path("photos").mkdir()
    for path in ("a.jpg", "b.jpg", "photos/c.png"):
        Image.fromarray(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=g).numpy()).save(path)

    blocks = [(doc.name, code) for doc in sorted((ROOT / "docs").glob("*.md"))
              for code in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)]
    assert len(blocks) >= 3
    scopes = {}
    for name, code in blocks:
        scope = {"images": torch.rand(2, 3, 32, 32, generator=g)}  # what docs/fit.md's example takes as given
        try:
            exec(code.replace('device="cuda"', 'device="cpu"'), scope)
        except Exception as e:
            raise AssertionError(f"{name}: {type(e).__name__}: {e}\n{code}") from e
        scopes.setdefault(name, scope)
    _the_docs_python_examples_do_what_their_comments_say(scopes, clip)


def _the_docs_python_examples_do_what_their_comments_say(scopes: dict, clip) -> None:
    """The comments of the docs' Python examples (shapes, ranges, normalised or not), checked on what
    each example left in its scope: the cosines against open_clip's own image features."""
    import torch
    import torch.nn.functional as F

    from clip_smot.clip.prompt_file import load_prompt

    # docs/fit.md: cos [B, K] of images in [0, 1], not normalised; logits = logit_scale.exp() * cos
    fit = scopes["fit.md"]
    clf, images = fit["clf"], fit["images"]
    assert clf.clip.image_size == images.shape[-1] == 32  # S = clf.clip.image_size
    normalised = (images - torch.tensor(clip.mean).view(1, 3, 1, 1)) / torch.tensor(clip.std).view(1, 3, 1, 1)
    with torch.no_grad():
        image = F.normalize(clip.model.encode_image(normalised), dim=-1)  # open_clip's own path
    text = F.normalize(load_prompt("runs/smot-in1k/prompt.safetensors").text_features, dim=-1)
    torch.testing.assert_close(fit["cos"], image @ text.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(fit["logits"], clip.model.logit_scale.exp() * fit["cos"], atol=1e-4, rtol=1e-5)
    assert clf.text_features.shape == (3, 32) and torch.allclose(clf.text_features.norm(dim=-1), torch.ones(3))
    assert clf.classnames == ["cat", "dog", "tree frog"]

    # docs/prompt.md: [K, e] float32 text features, not normalised; the context the only parameter
    prompt = scopes["prompt.md"]
    features, learner = prompt["text_features"], prompt["learner"]
    assert features.shape == (2, 32) and features.dtype == torch.float32
    assert not torch.allclose(features.norm(dim=-1), torch.ones(2))
    params = [p for group in prompt["optimizer"].param_groups for p in group["params"]]
    assert len(params) == 1 and params[0] is learner.ctx
    assert learner.ctx.shape == (16, 32) and learner.state_dict().keys() == {"ctx"}

    # docs/score.md: tensors [2] per score, a predicted class index each; the last score_paths gives the
    # fitted and image scores of the one image under photos/
    score = scopes["score.md"]
    out, res = score["out"], score["res"]
    assert out.keys() == {"mcm", "energy", "pred_index"}
    assert all(v.shape == (2,) for v in out.values())
    assert ((1 / 3 <= out["mcm"]) & (out["mcm"] <= 1)).all()  # a max softmax over K = 3 classes
    assert out["pred_index"].dtype == torch.int64 and 0 <= out["pred_index"].min() <= out["pred_index"].max() < 3
    assert res.paths == ["photos/c.png"]
    assert res.skipped == [] and all(res.scores[n].shape == (1,) for n in ("react", "odin", "gradnorm"))
    assert score["zs"].classnames == ["cat", "dog"]
