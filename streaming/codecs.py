"""Every compression codec Kafka defines must be decodable before a consumer starts: a batch
the consumer cannot decompress would otherwise crash it at the same offset on every restart."""

from __future__ import annotations

from kafka import codec

from lantern.errors import ConfigError

#: codec → (kafka-python's check, the package that provides it)
CODECS = {
    "gzip": (codec.has_gzip, "the standard library's gzip"),
    "snappy": (codec.has_snappy, "python-snappy"),
    "lz4": (codec.has_lz4, "lz4"),
    "zstd": (codec.has_zstd, "zstandard"),
}


def missing_codecs() -> dict[str, str]:
    """codec → the package to install, for every codec this process cannot decode."""
    return {name: package for name, (available, package) in CODECS.items() if not available()}


def check_codecs() -> None:
    missing = missing_codecs()
    if missing:
        names = ", ".join(f"{name} (install {package})" for name, package in missing.items())
        raise ConfigError(f"Kafka codecs missing: {names}. Producers may compress with any of them; "
                          "install the project's dependencies (kafka-python[crc32c,lz4,snappy,zstd])")
