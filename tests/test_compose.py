"""docker-compose.yml, validated offline by docker-compose itself for both profiles.

No image can be pulled in CI, so nothing is started: ``docker-compose config`` (Debian's
``docker-compose`` 1.29.2 needs no daemon) parses and validates the file, and the
normalised output is checked: image tags follow ``es_rerank/_versions.py``, every port
binds 127.0.0.1 only, OpenSearch sits in its own profile on 9202 with security off, host ports
and the open-files limit follow their environment variables, no memlock is asked for.
``tests/test_compose_live.py`` brings the same file up for real.
"""

from __future__ import annotations

import os
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


COMPOSE_VARS = ("ES_RERANK_COMPOSE_ES_PORT", "ES_RERANK_COMPOSE_OPENSEARCH_PORT", "ES_RERANK_COMPOSE_SERVE_PORT",
                "ES_RERANK_COMPOSE_NOFILE")


def _config(path: Path, *profiles: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = [DOCKER_COMPOSE, "-f", str(path)]
    for profile in profiles:
        args += ["--profile", profile]
    # the file's defaults, whatever this shell exports
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS}
    return subprocess.run([*args, "config"], capture_output=True, text=True, cwd=path.parent, timeout=60,
                          env={**base, **(env or {})})


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


def test_engines_ask_for_open_files_not_memlock(config):
    """memlock is only for bootstrap.memory_lock, which is not set; it blocks a start without CAP_SYS_RESOURCE."""
    for name in ("elasticsearch", "opensearch"):
        service = config["services"][name]
        assert service["ulimits"] == {"nofile": {"soft": 65536, "hard": 65536}}
        assert not any("memory_lock" in str(e) for e in service["environment"])


def test_ports_and_open_files_follow_the_environment():
    env = {"ES_RERANK_COMPOSE_ES_PORT": "19200", "ES_RERANK_COMPOSE_OPENSEARCH_PORT": "19202",
           "ES_RERANK_COMPOSE_SERVE_PORT": "19201", "ES_RERANK_COMPOSE_NOFILE": "20000"}
    proc = _config(COMPOSE, "opensearch", "serve", env=env)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {name: _ports(s) for name, s in services.items()} == {
        "elasticsearch": [("127.0.0.1", "19200", "9200")], "opensearch": [("127.0.0.1", "19202", "9200")],
        "serve": [("127.0.0.1", "19201", "9201")]}
    assert services["elasticsearch"]["ulimits"]["nofile"] == {"soft": 20000, "hard": 20000}
    assert services["opensearch"]["ulimits"]["nofile"] == {"soft": 20000, "hard": 20000}


def test_validator_rejects_a_broken_file(tmp_path):
    """The check above can fail: the same command refuses a file with a wrong type and an unknown key."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace('profiles: ["opensearch"]', 'profiles: "opensearch"\n    portz: 1'))
    proc = _config(broken, "opensearch")
    assert proc.returncode != 0
    assert "profiles contains an invalid type" in proc.stderr and "'portz'" in proc.stderr
