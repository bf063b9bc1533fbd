#!/usr/bin/env python3
"""Is a Kafka broker really serving? Sends a Metadata v4 request and exits 0 only when the
answer lists at least one broker and a controller.

Used by scripts/kafka to wait for readiness: an open port is not enough, since a KRaft node
accepts connections before it has joined its quorum and registered as a broker.
usage: probe.py HOST PORT [TIMEOUT_SECONDS]
"""
import socket
import struct
import sys


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def probe(host, port, timeout):
    client_id = b"howk-probe"
    # Request header v1 (api_key=3 Metadata, api_version=4, correlation_id, client_id), then the
    # v4 body: topics = null (all), allow_auto_topic_creation = false.
    body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body += struct.pack(">ib", -1, 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", read_exact(sock, 4))
        resp = read_exact(sock, size)
    correlation_id, _throttle, broker_count = struct.unpack(">iii", resp[:12])
    if correlation_id != 7 or broker_count < 1:
        return False
    pos = 12
    for _ in range(broker_count):
        pos += 4  # node_id
        (host_len,) = struct.unpack(">h", resp[pos : pos + 2])
        pos += 2 + host_len + 4  # host, port
        (rack_len,) = struct.unpack(">h", resp[pos : pos + 2])
        pos += 2 + max(rack_len, 0)
    (cluster_len,) = struct.unpack(">h", resp[pos : pos + 2])
    pos += 2 + max(cluster_len, 0)
    (controller_id,) = struct.unpack(">i", resp[pos : pos + 4])
    return controller_id >= 0


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    try:
        sys.exit(0 if probe(host, port, timeout) else 1)
    except (OSError, ConnectionError, struct.error):
        sys.exit(1)
