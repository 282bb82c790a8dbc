"""Every Kafka codec is decodable here, and a missing one stops the consumer with its name."""

import pytest

from lantern.errors import ConfigError
from streaming import codecs


def test_every_codec_kafka_defines_is_installed():
    assert codecs.missing_codecs() == {}
    codecs.check_codecs()


def test_a_missing_codec_is_named_with_its_package(monkeypatch):
    monkeypatch.setitem(codecs.CODECS, "lz4", (lambda: False, "lz4"))
    with pytest.raises(ConfigError, match=r"Kafka codecs missing: lz4 \(install lz4\)"):
        codecs.check_codecs()
