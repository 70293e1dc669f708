"""The name a machine reports to Airflow as the host of the tasks it runs.

Airflow records each task instance's host (``[core] hostname_callable``). Machines of a real
deployment have names of their own; workers started side by side on one test machine do not,
so ``SIS_SYNC_HOSTNAME`` gives each its own.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """``SIS_SYNC_HOSTNAME``, else the machine's fully qualified domain name."""
    return os.environ.get("SIS_SYNC_HOSTNAME") or socket.getfqdn()
