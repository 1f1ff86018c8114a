"""Run ``united run -c CONFIG`` in this process, then report what is left behind.

Used by tests/test_node_process.py: after the node stops (SIGTERM/SIGINT), it
prints one JSON line with the live threads, whether the libp2p port still
accepts connections and whether the control socket file remains.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path

from united_core.cli import main

config, port = Path(sys.argv[1]), int(sys.argv[2])
status = main(["run", "-c", str(config)])
with socket.socket() as probe:
    probe.settimeout(0.5)
    port_open = probe.connect_ex(("127.0.0.1", port)) == 0
report = {
    "status": status,
    "threads": sorted(t.name for t in threading.enumerate()),
    "port_open": port_open,
    "socket_file": (config.parent / "united.sock").exists(),
}
print("REPORT " + json.dumps(report), flush=True)
sys.exit(status)
