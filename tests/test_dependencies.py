"""`pip install .` without extras gives a `neva` command that works: its imports are all declared dependencies.

Two checks. The fast one reads every import in the installed packages (neva_kernels, neva_model) and requires
each third-party module to come from a distribution in pyproject's `dependencies`, or to be one of the few
optional ones, imported only behind a check that says how to install it. The slow one installs neva into a fresh
venv that sees nothing but the declared dependencies and their own requirements (linked from this environment,
as installing torch again would take minutes and gigabytes), and runs `neva ask` on the shipped model there.
"""
from __future__ import annotations

import ast
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("neva_kernels", "neva_model")
# Imported only when present, each behind a check: triton by neva_kernels/triton_kernels/__init__.py (the backend
# is then reported missing), transformers for sentencepiece tokenizers (the error names the extra to install) and
# in neva_kernels/integrations (imported by whoever integrates with transformers).
OPTIONAL = {"triton": "triton", "transformers": "sentencepiece"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files of the packages importing it (absolute imports outside the stdlib and neva)."""
    found: dict[str, set[str]] = {}
    for path in (p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top not in PACKAGES:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency_or_a_guarded_optional_one():
    project = _project()
    declared = {_normalized(Requirement(r).name) for r in project["dependencies"]}
    distributions = metadata.packages_distributions()
    for module, files in _third_party_imports().items():
        owners = {_normalized(d) for d in distributions.get(module, [])}
        assert owners, f"{module} (imported by {sorted(files)}) is not installed here: which distribution is it?"
        if module in OPTIONAL:
            extra = project["optional-dependencies"][OPTIONAL[module]]
            assert owners.isdisjoint(declared) and owners & {_normalized(Requirement(r).name) for r in extra}
        else:
            assert owners & declared, (f"{module} (from {sorted(owners)}) is imported by {sorted(files)} but is not "
                                       f"in pyproject's dependencies: `pip install .` would give a broken neva")


def _requirement_closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions of `requirements` and, recursively, of what they require (extras followed)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), True) for r in requirements]
    while todo:
        requirement, ours = todo.pop()
        name = _normalized(requirement.name)
        if name in seen:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            assert not ours, f"neva's dependency {requirement} is not installed here"
            continue  # a platform-specific requirement of a dependency that this machine does without
        seen[name] = distribution
        for text in distribution.requires or []:
            needed = Requirement(text)
            extras = {""} | requirement.extras
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
                todo.append((needed, False))
    return list(seen.values())


def _link_distributions(distributions: list[metadata.Distribution], directory: Path) -> None:
    """Symlink each distribution's top-level files and folders (its modules and its .dist-info) into directory."""
    directory.mkdir()
    for distribution in distributions:
        for top in {f.parts[0] for f in distribution.files or [] if f.parts[0] != ".."}:
            link, target = directory / top, Path(distribution.locate_file(top))
            if not link.exists() and target.exists():
                link.symlink_to(target)


@pytest.mark.slow
def test_a_venv_with_only_the_declared_dependencies_runs_neva_ask(tmp_path):
    # Only the project's packaged sources: building in the worktree would leave build/ and egg-info there.
    source = tmp_path / "source"
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (source / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))

    # setuptools builds the wheel (--no-build-isolation: nothing can be downloaded here); torch requires it anyway.
    dependencies = _requirement_closure(_project()["dependencies"] + ["setuptools"])
    _link_distributions(dependencies, tmp_path / "dependencies")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    site_packages = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip())
    (site_packages / "neva_dependencies.pth").write_text(f"{tmp_path / 'dependencies'}\n")

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "NEVA_BUILD_CUDA": "0"}
    # Python < 3.12 seeds a venv with its own old setuptools, which would shadow the linked one.
    subprocess.run([python, "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"], env=env, check=True,
                   capture_output=True)
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              "--quiet", str(source)], env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    ask = subprocess.run([environment / "bin" / "neva", "ask", "--image",
                          str(ROOT / "neva_model" / "examples" / "scene-1.png"), "How many shapes are there?"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ask.returncode == 0 and ask.stdout.strip() and "decode" in ask.stderr, ask.stderr
    # The sources that ran are the venv's copy, not this checkout's.
    where = subprocess.check_output([python, "-c", "import neva_model; print(neva_model.__file__)"], env=env,
                                    cwd=tmp_path, text=True)
    assert where.startswith(str(site_packages))
