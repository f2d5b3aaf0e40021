"""Forward 127.0.0.1:<port> to <host>:<port> (TCP, no TLS termination), for compose only.

The OpenID issuer is https://localhost:<idp port>/realms/dicomweb for browsers (Keycloak's port
is published on the host's loopback) and for the gateway, which fetches discovery from the
issuer. This runs in the gateway's network namespace (`network_mode: service:gateway`) so that
the gateway's `localhost:<idp port>` reaches Keycloak; TLS stays end to end (Keycloak's
certificate names localhost). Standard library only; no shell in the image.
"""

import asyncio
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def main(listen: int, host: str, port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(host, port)
        except OSError:
            w.close()
            return
        await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
