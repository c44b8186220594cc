"""docker-compose.yml, validated offline by docker-compose itself for both profiles.

No image can be pulled in CI, so nothing is started: ``docker-compose config`` (Debian's
``docker-compose`` 1.29.2 needs no daemon) parses and validates the file, and the
normalised output is checked: image tags follow ``es_rerank/_versions.py``, every port
binds 127.0.0.1 only, OpenSearch sits in its own profile on 9202 with security off.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from es_rerank._versions import ES_VERSION, OPENSEARCH_VERSION

yaml = pytest.importorskip("yaml", reason="PyYAML reads docker-compose's normalised output")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKER_COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (Debian: apt-get install -y docker-compose); it validates "
           "docker-compose.yml offline")


def _config(path: Path, *profiles: str) -> subprocess.CompletedProcess:
    args = [DOCKER_COMPOSE, "-f", str(path)]
    for profile in profiles:
        args += ["--profile", profile]
    return subprocess.run([*args, "config"], capture_output=True, text=True, cwd=path.parent, timeout=60)


@pytest.fixture(scope="module", params=[(), ("opensearch",), ("serve",)], ids=["default", "opensearch", "serve"])
def config(request) -> dict:
    proc = _config(COMPOSE, *request.param)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _ports(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            out.append(("", *parts) if len(parts) == 2 else tuple(parts) if len(parts) == 3 else ("", "", parts[0]))
    return out


def test_services_and_profiles(config):
    services = config["services"]
    assert set(services) == {"elasticsearch", "opensearch", "serve"}
    assert "profiles" not in services["elasticsearch"]  # the default: `docker compose up` starts it
    assert services["opensearch"]["profiles"] == ["opensearch"]
    assert services["serve"]["profiles"] == ["serve"]


def test_image_tags_follow_versions(config):
    services = config["services"]
    assert services["elasticsearch"]["image"] == f"docker.elastic.co/elasticsearch/elasticsearch:{ES_VERSION}"
    assert services["opensearch"]["image"] == f"opensearchproject/opensearch:{OPENSEARCH_VERSION}"


def test_every_port_binds_loopback_only(config):
    published = {}
    for name, service in config["services"].items():
        ports = _ports(service)
        assert ports, f"{name} publishes no port"
        for host_ip, host_port, _ in ports:
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port} on {host_ip or 'all addresses'}"
        published[name] = [(p[1], p[2]) for p in ports]
    # both can run side by side
    assert published == {"elasticsearch": [("9200", "9200")], "opensearch": [("9202", "9200")],
                         "serve": [("9201", "9201")]}


def test_opensearch_is_a_plain_local_single_node(config):
    service = config["services"]["opensearch"]
    env = service["environment"]
    assert env["DISABLE_SECURITY_PLUGIN"] == "true" and env["DISABLE_INSTALL_DEMO_CONFIG"] == "true"
    assert env["discovery.type"] == "single-node"
    assert env["OPENSEARCH_JAVA_OPTS"] == "-Xms1g -Xmx1g"
    assert "_cluster/health" in " ".join(service["healthcheck"]["test"])
    volume = service["volumes"][0].split(":")[0]
    assert volume in config["volumes"]  # a named volume, not a host folder


def test_validator_rejects_a_broken_file(tmp_path):
    """The check above can fail: the same command refuses a file with a wrong type and an unknown key."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace('profiles: ["opensearch"]', 'profiles: "opensearch"\n    portz: 1'))
    proc = _config(broken, "opensearch")
    assert proc.returncode != 0
    assert "profiles contains an invalid type" in proc.stderr and "'portz'" in proc.stderr
