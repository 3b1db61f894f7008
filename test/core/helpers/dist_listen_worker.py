"""One rank of test_distributed.py's listening-socket check: join the group, all-reduce once,
say so in ``OUT/ready_<rank>``, then stay in the group until the test writes ``OUT/done``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ccl_lgs_ros import distributed as D

out = Path(sys.argv[1])
ctx = D.init_from_env("cpu", 60.0)
t = torch.ones(1)
torch.distributed.all_reduce(t)
assert t.item() == ctx.world_size
(out / f"ready_{ctx.rank}").write_text("ok")
deadline = time.monotonic() + 60
while not (out / "done").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
D.shutdown()
