"""What the quick start relies on before es-rerank is installed.

scripts/quickstart.sh starts the local node from the source tree with the system Python while
pip installs (``python3 -m es_rerank.cluster start``): that path must need the standard library
only. Checked in a child interpreter without site-packages (``-S``), so an installed numpy,
click or elasticsearch cannot hide an import of them.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_the_cluster_module_runs_on_the_standard_library_alone():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import es_rerank.cluster.__main__ as m; "
            "import es_rerank; es_rerank.PACKAGE_VERSION; "
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'numpy', 'click', 'elasticsearch', 'httpx', "
            "'tokenizers', 'onnxruntime', 'starlette'}))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # as the quick start runs it: PYTHONPATH is the source tree
    out = subprocess.run([sys.executable, "-S", "-m", "es_rerank.cluster", "start", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and "--port" in out.stdout, out.stderr


def test_the_package_still_offers_its_names_lazily():
    import es_rerank

    assert es_rerank.Searcher.__name__ == "Searcher" and es_rerank.Settings.__name__ == "Settings"
    assert set(es_rerank.__all__) <= set(dir(es_rerank)) | set(es_rerank._LAZY)
    try:
        es_rerank.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_the_quick_start_overlaps_the_install_and_tunes_before_answering():
    script = (ROOT / "scripts" / "quickstart.sh").read_text()
    assert script.index("-m es_rerank.cluster start") < script.index("scripts/setup.sh")
    assert script.index("es-rerank index") < script.index("es-rerank tune") < script.index("es-rerank query")
    assert "--apply" in script[script.index("es-rerank tune"):script.index("es-rerank query")]
