"""The lock files (requirements/*.txt, made by scripts/lock.sh) agree with pyproject.toml's ranges.

What a user would notice if they did not: a dependency missing from a lock (an ImportError after a
clean install), a locked version outside pyproject's bounds (a version below a security fix, or above
an upper bound on a package whose internals the code uses), two locks that cannot be installed
together (scripts/setup.sh dev,ndi installs base.txt, dev.txt and ndi.txt at once), or a lock that
makes pip pull a CUDA torch onto a CPU machine. No network: the files and the installed metadata.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT.get("optional-dependencies", {})
TORCH_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # installed with torch, never from a lock

# Where the universal locks must hold: the platforms and Pythons the project installs on.
PLATFORMS = [
    ("linux", "Linux", "posix", "x86_64"),
    ("linux", "Linux", "posix", "aarch64"),
    ("darwin", "Darwin", "posix", "arm64"),
    ("win32", "Windows", "nt", "AMD64"),
]
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def environments() -> list[dict[str, str]]:
    requires = PROJECT["requires-python"]
    envs = []
    for python in PYTHONS:
        if Version(python) not in Requirement(f"python{requires}").specifier:
            continue
        for sys_platform, system, os_name, machine in PLATFORMS:
            env = dict(default_environment())
            env.update(sys_platform=sys_platform, platform_system=system, os_name=os_name, platform_machine=machine,
                       python_version=python, python_full_version=f"{python}.0", implementation_name="cpython",
                       platform_python_implementation="CPython", extra="")
            envs.append(env)
    return envs


ENVIRONMENTS = environments()


def env_id(env: dict[str, str]) -> str:
    return f"{env['sys_platform']}-{env['platform_machine']}-py{env['python_version']}"


def report(problems: dict[str, list[str]]) -> str:
    """One line a problem, with where it holds: 'message (linux-x86_64-py3.11 and 7 more)'."""
    lines = []
    for message, where in sorted(problems.items()):
        more = f" and {len(where) - 1} more" if len(where) > 1 else ""
        lines.append(f"{message} ({where[0]}{more})")
    return "\n".join(lines)


def read_lock(name: str) -> list[Requirement]:
    """The pins of requirements/<name>.txt (annotations and comments dropped)."""
    pins = []
    for number, line in enumerate((LOCKS / f"{name}.txt").read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        assert len(requirement.specifier) == 1 and next(iter(requirement.specifier)).operator == "==", (
            f"requirements/{name}.txt:{number}: not pinned with ==: {text}"
        )
        pins.append(requirement)
    return pins


def pinned(pins: list[Requirement], env: dict[str, str]) -> dict[str, Version]:
    """What a lock installs in `env`: name -> version."""
    chosen: dict[str, Version] = {}
    for pin in pins:
        if pin.marker is None or pin.marker.evaluate(env):
            name = canonicalize_name(pin.name)
            version = Version(next(iter(pin.specifier)).version)
            assert chosen.setdefault(name, version) == version, f"{name} pinned twice for {env_id(env)}"
    return chosen


def lock_names() -> list[str]:
    """base, and one lock per extra (scripts/setup.sh takes any of them)."""
    return ["base", *sorted(EXTRAS)]


def wanted(lock: str) -> list[Requirement]:
    """pyproject's requirements that `lock` must satisfy (torch comes from requirements/torch.txt)."""
    requirements = [Requirement(text) for text in PROJECT["dependencies"]]
    if lock != "base":
        requirements += [Requirement(text) for text in EXTRAS[lock]]
    return [r for r in requirements if canonicalize_name(r.name) != "torch"]


def torch_pin() -> Version:
    pins = read_lock("torch")
    assert [canonicalize_name(p.name) for p in pins] == ["torch"], "requirements/torch.txt pins torch and nothing else"
    return Version(next(iter(pins[0].specifier)).version)


def test_every_extra_has_a_lock():
    missing = [name for name in lock_names() if not (LOCKS / f"{name}.txt").is_file()]
    assert not missing, f"no lock file for {missing}: run scripts/lock.sh"


@pytest.mark.parametrize("lock", lock_names())
def test_lock_holds_every_dependency_within_pyproject_bounds(lock: str):
    pins = read_lock(lock)
    problems: dict[str, list[str]] = {}
    for env in ENVIRONMENTS:
        chosen = pinned(pins, env)
        for requirement in wanted(lock):
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            name = canonicalize_name(requirement.name)
            if name not in chosen:
                message = f"{requirement} is missing from requirements/{lock}.txt"
            elif not requirement.specifier.contains(chosen[name], prereleases=True):
                message = f"requirements/{lock}.txt pins {name}=={chosen[name]}, outside pyproject's {requirement}"
            else:
                continue
            problems.setdefault(message, []).append(env_id(env))
    assert not problems, "run scripts/lock.sh:\n" + report(problems)


@pytest.mark.parametrize("lock", lock_names() + ["all"])
def test_lock_leaves_torch_and_its_cuda_packages_out(lock: str):
    found = sorted({p.name for p in read_lock(lock) if TORCH_ONLY.match(canonicalize_name(p.name))})
    assert not found, f"requirements/{lock}.txt would install {found}: torch comes first, from requirements/torch.txt"


def test_torch_pin_is_within_pyproject_bounds():
    (torch,) = [Requirement(t) for t in PROJECT["dependencies"] if canonicalize_name(Requirement(t).name) == "torch"]
    assert torch.specifier.contains(torch_pin()), f"requirements/torch.txt pins {torch_pin()}, outside {torch}"


def test_locks_install_together():
    """Any set of locks installs at once: a package has one version, whatever lock pins it."""
    locks = {name: read_lock(name) for name in lock_names() + ["all"]}
    problems: dict[str, list[str]] = {}
    for env in ENVIRONMENTS:
        versions: dict[str, dict[Version, list[str]]] = {}
        for lock, pins in locks.items():
            for name, version in pinned(pins, env).items():
                versions.setdefault(name, {}).setdefault(version, []).append(lock)
        for name, by_version in versions.items():
            if len(by_version) > 1:
                message = f"{name}: " + ", ".join(f"{v} in {'/'.join(ls)}" for v, ls in sorted(by_version.items()))
                problems.setdefault(message, []).append(env_id(env))
    assert not problems, "locks pin different versions, run scripts/lock.sh:\n" + report(problems)


def test_installed_locked_packages_need_nothing_outside_the_locks():
    """Each locked package installed here at its locked version finds what it requires (its extras
    included) in the locks, at a version it accepts: a lock missing one would break a clean install
    (scripts/setup.sh installs with --no-deps)."""
    env = dict(default_environment())
    universe = {}
    for lock in lock_names():
        universe.update(pinned(read_lock(lock), env))
    universe["torch"] = torch_pin()
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for lock in lock_names() for r in wanted(lock)
            if r.marker is None or r.marker.evaluate(env)]
    seen, checked, problems = set(), 0, []
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name == "torch":  # torch's own requirements come with its build
            continue
        seen.add((name, extras))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if Version(dist.version) != universe.get(name):
            continue  # not installed from the locks: nothing to learn from its metadata
        checked += 1
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({**env, "extra": extra}) for extra in {"", *extras}
            ):
                continue
            dep = canonicalize_name(requirement.name)
            if dep not in universe:
                problems.append(f"{name} {dist.version} requires {requirement}: in no lock")
            elif not requirement.specifier.contains(universe[dep], prereleases=True):
                problems.append(f"{name} {dist.version} requires {requirement}: locked {dep}=={universe[dep]}")
            todo.append((dep, frozenset(requirement.extras)))
    if checked == 0:
        pytest.skip("no locked package is installed at its locked version here")
    assert not problems, "run scripts/lock.sh:\n" + "\n".join(sorted(set(problems)))
