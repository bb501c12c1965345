"""Hand the host's pip index settings to the pip inside a container build, without baking them in.

    python3 docker/host_pip.py HOME_DIR

Asks the host's own pip (the python running this) which index, extra indexes, find-links, trusted
hosts, proxy and CA bundle `pip wheel` would use here -- its configuration files and PIP_*
variables, resolved by pip itself -- and writes them as HOME_DIR/.config/pip/pip.conf for a build
whose root user has HOME_DIR mounted as its home (/root).  The CA bundle is copied next to it; local
folders (file:// indexes, find-links paths) are bind-mounted read-only beside it, each with its
parent folder so that an index's relative links to its files keep working.  Prints the `--volume` options
for `buildah bud`, one per line.  docker/build-test.sh uses it; docker/README.md says why.
"""

import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

HOME = "/root"  # the build's home: root's, in both base images
CONF = ".config/pip"  # pip's user configuration folder under $HOME


def host_options():
    """pip's own view of its index options for `pip wheel` on this host (configuration and PIP_* applied)."""
    from pip._internal.commands import create_command  # pip's own parser: no second guess of its precedence

    options, _ = create_command("wheel").parse_args([])
    return options


def local_folder(source):
    """The local folder a file:// URL or a plain path names, else None (a network source)."""
    if source.startswith("file:"):
        return Path(unquote(urlparse(source).path))
    if "://" not in source:
        return Path(source)
    return None


def write_config(home, options):
    """Write home/.config/pip/pip.conf (and the CA bundle); return [(host folder, build folder)] to mount."""
    folder = Path(home) / CONF
    folder.mkdir(parents=True, exist_ok=True)
    mounts, lines = [], ["[global]"]

    def carried(source):
        path = local_folder(source)
        if path is None:
            return source
        path = path.resolve()
        mounts.append((path.parent, f"{HOME}/{CONF}/local-{len(mounts)}"))
        inside = f"{mounts[-1][1]}/{path.name}"
        return f"file://{inside}" if source.startswith("file:") else inside

    if options.no_index:
        lines.append("no-index = true")
    elif options.index_url:
        lines.append(f"index-url = {carried(options.index_url)}")
    for key, values in (("extra-index-url", options.extra_index_urls), ("find-links", options.find_links),
                        ("trusted-host", options.trusted_hosts)):
        if values:
            lines.append(f"{key} = " + " ".join(carried(v) if key != "trusted-host" else v for v in values))
    if options.proxy:
        lines.append(f"proxy = {options.proxy}")
    if options.cert:
        shutil.copyfile(options.cert, folder / "ca.pem")
        lines.append(f"cert = {HOME}/{CONF}/ca.pem")
    (folder / "pip.conf").write_text("\n".join(lines) + "\n")
    for _, inside in mounts:  # the mount points live in the host folder, never in the image
        (Path(home) / inside.removeprefix(HOME + "/")).mkdir(parents=True, exist_ok=True)
    return mounts


def main(argv):
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    home = Path(argv[0])
    mounts = write_config(home, host_options())
    print(f"--volume={home.resolve()}:{HOME}")
    for host, inside in mounts:
        print(f"--volume={host}:{inside}:ro")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
