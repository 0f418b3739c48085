"""Operating-system limits a server with thousands of connections runs into.

Each WebSocket connection holds one file descriptor; the usual soft limit of 1024 open files
would refuse connections long before ``max_sessions`` at GPU scale. The soft limit is raised
(never above the hard limit, which needs no privilege) at start-up, and a shortfall is logged.
"""

from __future__ import annotations

# Descriptors beyond the connections: the listening socket, logs, model files, the event loop's.
SPARE_FILES = 64


def raise_open_files_limit(connections: int) -> tuple[int, int]:
    """Raise the soft open-files limit towards ``connections + SPARE_FILES``.

    Returns ``(limit now, limit wanted)``; the first is lower where the hard limit is.
    On platforms without ``resource`` (Windows) nothing changes.
    """
    wanted = connections + SPARE_FILES
    try:
        import resource
    except ImportError:
        return wanted, wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return (wanted if soft == resource.RLIM_INFINITY else soft), wanted
