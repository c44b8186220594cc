"""The English analysis plugin for the local Elasticsearch, built from the sources shipped here.

Elastic's Maven Central distribution has no analysis-common module, so no ``english``
analyzer and no stemmers. This builds a *stable* plugin (the plugin API that needs no
Elasticsearch internals) from ``es_rerank/plugins/analysis-english``: analyzer
``english`` (Lucene's EnglishAnalyzer: standard tokenizer, English possessive filter,
lowercase, English stop words, Porter stemmer — the chain of Elasticsearch's own
``english`` analyzer) and token filters ``porter_stem`` and ``kstem``. The plugin API jars
and Lucene's analyzers are already in the distribution's ``lib/`` (the API jars there are
byte-identical to ``org.elasticsearch.plugin:elasticsearch-plugin{,-analysis}-api`` on
Maven Central), so compiling needs only a JDK. A stable plugin must name the exact
server version, so it is rebuilt for each distribution.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import zipfile
from importlib import resources
from pathlib import Path

from ..errors import ClusterError

logger = logging.getLogger(__name__)

PLUGIN_NAME = "es-rerank-analysis-english"
JAVA_RELEASE = 21
# the jars of the distribution's lib/ that the sources compile against (prefixes; versions vary)
CLASSPATH_JARS = ("elasticsearch-plugin-api-", "elasticsearch-plugin-analysis-api-",
                  "lucene-core-", "lucene-analysis-common-")


def _source_root():
    return resources.files("es_rerank").joinpath("plugins", "analysis-english")


def source_files() -> dict[str, bytes]:
    """The plugin's shipped files by relative path: Java sources and ``named_components.json``."""
    files: dict[str, bytes] = {}

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{rel}/")
            elif rel.endswith(".java") or rel == "named_components.json":
                files[rel] = child.read_bytes()

    walk(_source_root(), "")
    if "named_components.json" not in files or not any(r.endswith(".java") for r in files):
        raise ClusterError(f"the analysis plugin sources are missing from the installed package ({_source_root()})")
    return files


def plugin_version() -> str:
    """A version that changes whenever the shipped sources change (so an old build is replaced)."""
    digest = hashlib.sha256()
    for rel, data in sorted(source_files().items()):
        digest.update(rel.encode() + b"\0" + data + b"\0")
    return f"1.0.0+{digest.hexdigest()[:12]}"


def descriptor(es_version: str) -> str:
    """The ``stable-plugin-descriptor.properties`` text for an Elasticsearch version."""
    return (f"name={PLUGIN_NAME}\n"
            "description=English analyzer (english) and stemmers (porter_stem, kstem) for es-rerank\n"
            f"version={plugin_version()}\n"
            f"elasticsearch.version={es_version}\n"
            f"java.version={JAVA_RELEASE}\n")


def classpath(dist: Path) -> list[Path]:
    """The distribution's jars the plugin compiles against.

    Raises:
        ClusterError: One of them is missing from ``dist/lib``.
    """
    lib = dist / "lib"
    jars = []
    for prefix in CLASSPATH_JARS:
        found = sorted(p for p in lib.glob(f"{prefix}*.jar") if p.name[len(prefix):][:1].isdigit())
        if len(found) != 1:
            raise ClusterError(f"expected one {prefix}<version>.jar in {lib}, found {[p.name for p in found]}")
        jars.append(found[0])
    return jars


def build(dist: Path, *, java_home: Path, es_version: str, workdir: Path) -> Path:
    """Compile, jar and zip the plugin for the distribution at ``dist``.

    Args:
        dist: The unpacked Elasticsearch distribution.
        java_home: A JDK (``bin/javac``) of Java 21 or later.
        es_version: The server version written into the descriptor.
        workdir: An empty folder for the build (the caller deletes it).

    Returns:
        The plugin zip, ready for ``elasticsearch-plugin install``.

    Raises:
        ClusterError: No javac, or the compiler failed (its output is in the message).
    """
    javac = java_home / "bin" / "javac"
    if not javac.is_file():
        raise ClusterError(f"{java_home} is a Java runtime without javac; the English analysis plugin is "
                           "compiled at `cluster start`: install a JDK and set ES_JAVA_HOME")
    src, classes = workdir / "src", workdir / "classes"
    files = source_files()
    java_sources = []
    for rel, data in files.items():
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if rel.endswith(".java"):
            java_sources.append(str(target))
    classes.mkdir()
    cmd = [str(javac), "--release", str(JAVA_RELEASE), "-encoding", "UTF-8", "-proc:none", "-nowarn",
           "-d", str(classes), "-cp", ":".join(str(j) for j in classpath(dist)), *sorted(java_sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ClusterError(f"javac failed (exit {proc.returncode}) building {PLUGIN_NAME}:\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    jar = workdir / f"{PLUGIN_NAME}.jar"
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nCreated-By: es-rerank\r\n\r\n")
        for path in sorted(classes.rglob("*.class")):
            zf.write(path, path.relative_to(classes).as_posix())
    bundle = workdir / f"{PLUGIN_NAME}-{es_version}.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stable-plugin-descriptor.properties", descriptor(es_version))
        # shipping the component list spares the installer its class scan, which ran out of memory
        zf.writestr("named_components.json", files["named_components.json"])
        zf.write(jar, jar.name)
    return bundle
