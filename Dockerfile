# The relay server alone, without the desktop client (docs/server.md, "Hosting on a small VPS"):
#
#   docker build -t voipclient-server .
#   docker run -d --name voipclient-server --restart unless-stopped \
#       -p 64738:64738/tcp -p 64738:64738/udp -v voipclient-data:/data voipclient-server
#   docker run --rm -v voipclient-data:/data voipclient-server --invite --public-host HOST
#
# Arguments after the image name are added to the entry point's, so they can set more options
# (`--public-host HOST` makes the invite link in the log right, `--channel NAME`, `--config
# /data/server.toml`) or run a one-shot command (`--invite`, `--ban NAME`, `--list-bans`).
#
# Only the server's own dependencies are installed. pyproject.toml also lists the desktop
# client's (PySide6, sounddevice, Opus, hotkeys, noise suppression), which the server never
# imports (~300 MB; evdev, for the hotkeys, would even need a C compiler here); the package
# itself goes in with --no-deps. tests/integration/server/test_server_invite.py checks this list against what the
# server imports and against pyproject.toml's version bounds, and the command line against the
# server's real options.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN pip install \
        "cryptography>=50" \
        "msgspec>=0.18" \
        "confusable-homoglyphs>=3.3.1,<4" \
        "zeroconf>=0.132" \
        "uvloop>=0.19" \
        "nats-py>=2.9"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY voipclient ./voipclient
RUN pip install --no-deps . && cd / && rm -rf /src

# The data directory holds the server's TLS key, i.e. its pin: keep the volume, back it up.
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin voipclient \
    && mkdir -p /data && chown voipclient:voipclient /data && chmod 0700 /data
USER voipclient
WORKDIR /data
VOLUME /data

# One port number, both protocols: TCP for the TLS control connection, UDP for voice.
EXPOSE 64738/tcp 64738/udp

# A TCP connect, no TLS: it counts in the stats as tcp_accepted and tls_failed (once a minute),
# and is logged only at debug level. Change the port here too if you change --port.
HEALTHCHECK --interval=60s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 64738), 3).close()"]

ENTRYPOINT ["voipclient-server", "--host", "0.0.0.0", "--data-dir", "/data"]
CMD []
