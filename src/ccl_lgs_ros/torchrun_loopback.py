"""torchrun on one machine with its rendezvous store listening on loopback only (ROS-free).

torchrun's static rendezvous (``--master-addr``/``--master-port``) starts the agent's
``TCPStore`` server listening on every interface: torch has no bind-address option, so for the
whole run any host that can reach the machine could connect to that unauthenticated store.
On one machine nothing outside needs it. This module registers one more rendezvous backend
with torchrun's own registry, ``ccl-lgs-loopback``: torch's static rendezvous, except that the
store's server is handed a socket already listening on the loopback address
(``TCPStore(master_listen_fd=...)``, torch's own option for that). Then it runs torchrun's
``main`` unchanged. Workers connect to the agent's store as clients (``use_agent_store``), and
gloo / NCCL are kept on ``lo`` by :func:`ccl_lgs_ros.distributed.launch`, so a one-machine run
listens on loopback only (checked by ``test_distributed.py`` with the kernel's socket table).

Several machines use torchrun's c10d rendezvous unchanged (it must be reachable from the
other machines).

    python -m ccl_lgs_ros.torchrun_loopback --rdzv-backend=ccl-lgs-loopback \\
        --rdzv-endpoint=127.0.0.1:PORT --nnodes=1 --nproc-per-node=2 -m ccl_lgs_ros train ...
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

BACKEND = "ccl-lgs-loopback"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_handler(params: Any) -> Any:
    """The rendezvous handler torchrun asks the registry for (``RendezvousParameters`` in)."""
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    class LoopbackStaticRendezvous(StaticTCPRendezvous):
        """Static rendezvous of one machine whose store listens on a loopback socket."""

        def get_backend(self) -> str:
            return BACKEND

        def next_rendezvous(self) -> Any:
            if not self._store:
                family = socket.AF_INET6 if ":" in self.master_addr else socket.AF_INET
                sock = socket.create_server((self.master_addr, self.master_port), family=family, backlog=128)
                self.master_port = int(sock.getsockname()[1])  # port 0: the kernel's choice
                # The store owns the descriptor from here on (a Python socket object closing it
                # under the store's server thread would abort the process).
                self._store = TCPStore(
                    self.master_addr, self.master_port, self.world_size, True, self.timeout,
                    multi_tenant=True, master_listen_fd=sock.detach(),
                )  # fmt: skip
            return super().next_rendezvous()

    endpoint = (params.endpoint or "").strip()
    host, port = parse_rendezvous_endpoint(endpoint, default_port=0)
    if not _is_loopback(host):
        raise ValueError(f"the {BACKEND} rendezvous listens on loopback only; {host!r} is not a loopback address")
    if params.max_nodes != 1:
        raise ValueError(f"the {BACKEND} rendezvous is for one machine (--nnodes=1), got {params.max_nodes}")
    timeout = int(params.config.get("timeout", 600))
    return LoopbackStaticRendezvous(host, int(port), 0, 1, params.run_id, timeout)


def register() -> None:
    """Add :data:`BACKEND` to torchrun's rendezvous registry (idempotent)."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    rendezvous_handler_registry.register(BACKEND, create_handler)


def main(argv: list[str] | None = None) -> None:
    register()
    from torch.distributed.run import main as torchrun_main

    torchrun_main(argv)


if __name__ == "__main__":
    main()
