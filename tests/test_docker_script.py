"""`make test-docker`'s script runs on any build machine: no machine path, no package host named."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "images" / "test_docker.sh"


def test_test_docker_names_no_machine_path_or_mirror() -> None:
    text = SCRIPT.read_text()
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    urls = re.findall(r"https?://[^\s\"')]+", text)
    assert all(u.startswith("http://127.0.0.1") for u in urls), urls  # only the throw-away local index
    for host in ("pypi.org", "pythonhosted", "deb.debian.org", "download.pytorch.org"):
        assert host not in text
    assert "/opt/wheels" not in text
    assert 'pip download --quiet --no-deps' in text and '"torch==$TORCH_VERSION"' in text
    debootstrap = next(line for line in text.splitlines() if line.strip().startswith("debootstrap "))
    assert "http" not in debootstrap  # debootstrap's default mirror
    assert "/etc/pip.conf" in text  # the image's pip uses this host's index
