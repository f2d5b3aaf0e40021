"""`python -m ztemr serve --config <run>/emr/config.json`: the EMR simulator over TLS."""

from __future__ import annotations

import argparse
import ssl

import uvicorn

from .app import Config, create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ztemr")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the EMR simulator")
    serve.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    config = Config.load(args.config)
    server = uvicorn.Config(
        create_app(config),
        host=config.host,
        port=config.port,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        ssl_ciphers="ECDHE+AESGCM:ECDHE+CHACHA20",
        server_header=False,
        log_level="warning",
    )
    server.load()
    assert server.ssl is not None
    # BCP 195 / PS3.15 B.12 as on every other hop: TLS 1.2+ with ECDHE and AEAD only.
    server.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    server.ssl.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    uvicorn.Server(server).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
