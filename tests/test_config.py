"""Settings: precedence, parsing, validation and secrets kept out of repr."""

import re
from pathlib import Path

import pytest

from es_rerank.config import ENV_VARS, Settings
from es_rerank.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults():
    s = Settings.from_env(env={})
    assert (s.url, s.index, s.depth, s.final_k, s.rank_constant, s.fusion) == (
        "http://127.0.0.1:9200", "es-rerank", 50, 5, 60, "auto")


def test_precedence_argument_over_env_over_default():
    env = {"ES_RERANK_DEPTH": "30", "ES_RERANK_INDEX": "from-env"}
    s = Settings.from_env(env=env, index="from-arg")
    assert s.index == "from-arg" and s.depth == 30
    assert Settings.from_env(env=env, depth=None).depth == 30  # None means "not given"


def test_zero_is_a_value_not_a_fallback():
    s = Settings.from_env(env={"ES_RERANK_CHUNK_OVERLAP": "7"}, chunk_overlap=0)
    assert s.chunk_overlap == 0


@pytest.mark.parametrize("env,match", [
    ({"ES_RERANK_DEPTH": "many"}, "ES_RERANK_DEPTH must be an integer, got 'many'"),
    ({"ES_VERIFY_CERTS": "maybe"}, "ES_VERIFY_CERTS must be a boolean"),
    ({"ES_RERANK_FUSION": "magic"}, "fusion must be one of auto, server, client"),
    ({"ES_RERANK_DEPTH": "5", "ES_RERANK_FINAL_K": "8"}, r"final_k must be between 1 and depth \(5\), got 8"),
    ({"ES_RERANK_CHUNK_TOKENS": "50", "ES_RERANK_CHUNK_OVERLAP": "50"}, "chunk_overlap must be"),
    ({"ES_USERNAME": "elastic"}, "needs both ES_USERNAME and ES_PASSWORD"),
])
def test_bad_values_are_named(env, match):
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env=env)


def test_unknown_override():
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_env(env={}, colour="blue")


def test_secrets_never_in_repr_or_str():
    s = Settings.from_env(env={"ES_URL": "https://es:9200", "ES_USERNAME": "elastic",
                               "ES_PASSWORD": "hunter2-secret"})
    s2 = Settings.from_env(env={"ES_API_KEY": "apikey-secret-value"})
    for text in (repr(s), str(s), repr(s2), f"{s2}"):
        assert "hunter2-secret" not in text and "apikey-secret-value" not in text
    assert "password='***'" in repr(s)


def test_tls_verification_on_by_default_for_https():
    kwargs = Settings.from_env(env={"ES_URL": "https://es:9200", "ES_CA_CERTS": "/ca.pem"}).client_kwargs()
    assert kwargs["verify_certs"] is True and kwargs["ca_certs"] == "/ca.pem"


def test_readme_configuration_table_is_generated_from_settings():
    """Settings own every default, variable and help text; the README shows exactly that table."""
    from es_rerank.config import settings_table

    assert settings_table() in README.read_text()
    assert all(f"`{var}`" in settings_table() for var, _ in ENV_VARS.values())


def test_credentials_in_the_url_are_redacted():
    s = Settings.from_env(env={"ES_URL": "https://elastic:url-secret-pw@es.example:9243"})
    assert s.safe_url == "https://***@es.example:9243"
    assert "url-secret-pw" not in repr(s)


@pytest.mark.parametrize("url", [
    "https://elastic:pa/ss#wo?rd@es.example:9243",   # "/", "#", "?" make urlsplit misparse
    "http://elastic:s3cret@es.example:99999",         # a bad port makes .port raise
    "http://elastic:s3cret@[not-an-ip/",              # does not parse at all
])
def test_url_credentials_are_masked_even_when_the_url_does_not_parse(url):
    s = Settings.from_env(env={"ES_URL": url})
    for text in (s.safe_url, repr(s), s.redact(f"failed to reach {url}")):
        assert "s3cret" not in text and "pa/ss" not in text and "rd@" not in text.replace("***@", "")


@pytest.mark.parametrize("engine", ["elasticsearch", "opensearch"])
@pytest.mark.parametrize("password", ["Zq/7Kw#X9v?Lm", "Zq#7Kw", "Zq?7Kw/x", "Zq:7K@w"])
def test_an_unparsable_url_error_quotes_no_piece_of_the_password(engine, password):
    """The URL parser's own message can quote the piece of a password after a '/', '#' or '?';
    the error es-rerank raises gives the rule instead and masks the credentials."""
    from es_rerank.engines import engine_class
    from es_rerank.errors import ClusterError

    url = f"http://elastic:{password}@es.example:9243"
    e = engine_class(engine)(Settings(url=url))
    try:
        e.client  # builds the client: the URL is parsed here
    except ClusterError as err:
        message = str(err)
        assert "percent-encode" in message, message
    else:  # it parsed (the password held nothing that breaks the URL): nothing to check
        return
    pieces = [p for p in re.split(r"[/#?:@]", password) if len(p) >= 2]
    assert pieces and not any(p in message for p in pieces), message


def test_replace_none_means_none_and_validates():
    s = Settings(rerank_timeout=5.0)
    assert s.replace(rerank_timeout=None).rerank_timeout is None
    with pytest.raises(ConfigError, match="final_k must be set"):
        s.replace(final_k=None)
    with pytest.raises(ConfigError, match="unknown setting"):
        s.replace(colour="blue")


def test_explain_names_each_source_and_masks_secrets():
    from es_rerank.config import explain

    rows = {r.name: r for r in explain(env={"ES_RERANK_DEPTH": "30", "ES_PASSWORD": "pw-secret",
                                            "ES_USERNAME": "elastic"}, index="docs")}
    assert (rows["depth"].value, rows["depth"].source) == ("30", "environment")
    assert rows["depth"].env == "ES_RERANK_DEPTH"
    assert (rows["index"].value, rows["index"].source) == ("docs", "argument")
    assert (rows["final_k"].value, rows["final_k"].source) == ("5", "default")
    assert rows["password"].value == "***" and "pw-secret" not in repr(rows)
    # a default decided later shows as the README's table says, not as "(not set)"
    assert (rows["device"].value, rows["rerank_max_length"].value, rows["rerank_timeout"].value) == ("auto", "model's", "none")
    assert rows["ca_certs"].value == "(not set)"
    # values read as the README's table writes them
    assert (rows["verify_certs"].value, rows["request_timeout"].value) == ("true", "30")


def test_explain_cluster_shows_the_local_cluster_variables(tmp_path):
    from es_rerank.cluster.local import explain_cluster

    rows = {r.env: r for r in explain_cluster(env={"XDG_CACHE_HOME": str(tmp_path)})}
    assert set(rows) == {"ES_RERANK_CLUSTER_ENGINE", "ES_RERANK_CLUSTER_PORT", "ES_RERANK_CLUSTER_NODES",
                         "ES_RERANK_CLUSTER_HEAP", "ES_RERANK_CLUSTER_DIR", "ES_JAVA_HOME"}
    assert {r.source for r in rows.values()} == {"default"}
    assert (rows["ES_RERANK_CLUSTER_ENGINE"].value, rows["ES_RERANK_CLUSTER_PORT"].value) == ("elasticsearch", "9200")
    rows = {r.env: r for r in explain_cluster(env={"ES_RERANK_CLUSTER_ENGINE": "opensearch", "JAVA_HOME": "/jdk",
                                                   "ES_RERANK_CLUSTER_HEAP": "512m"})}
    assert rows["ES_RERANK_CLUSTER_PORT"].value == "9202"  # OpenSearch's own default port
    assert (rows["ES_RERANK_CLUSTER_HEAP"].value, rows["ES_RERANK_CLUSTER_HEAP"].source) == ("512m", "environment")
    assert (rows["ES_JAVA_HOME"].value, rows["ES_JAVA_HOME"].source) == ("/jdk", "environment (JAVA_HOME)")


def test_errors_carry_their_data():
    from es_rerank.errors import IndexMissingError, MappingMismatchError

    e = IndexMissingError("docs")
    assert e.index == "docs" and "es-rerank index PATH --index docs" in str(e)
    m = MappingMismatchError("docs", ["a", "b"])
    assert m.index == "docs" and m.problems == ["a", "b"] and str(m).endswith("a; b")
