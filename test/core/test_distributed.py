"""ccl_lgs_ros.distributed: torchrun with gloo on CPU, rendezvous on 127.0.0.1 only.

The torchrun tests start real worker processes (torch.distributed.run). CI runs them inside a
private network namespace (scripts/run_tests.sh: ``unshare -n``); they bind 127.0.0.1 only either
way. The end-to-end ones compare a 2-rank run of the whole pipeline against one process on the
same synthetic scene.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ccl_lgs_ros import distributed as D

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).parent / "helpers" / "dist_worker.py"
WORKER_LISTEN = Path(__file__).parent / "helpers" / "dist_listen_worker.py"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",  # one thread per rank (2 ranks on 2 cores)
        "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
    })  # fmt: skip
    env.update(extra)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def _torchrun(*args: str, nproc: int = 2, port: int | None = None) -> list[str]:
    """One machine, as ``ccl-lgs train --nproc`` starts it (store on loopback), running ``args``."""
    argv = D.launcher_argv(nproc, 1, "", "test", [], master_port=port)
    assert argv[-2:] == ["-m", "ccl_lgs_ros"]
    return [*argv[:-2], *args]


def _plain_torchrun(*args: str, nproc: int = 2) -> list[str]:
    """torchrun's own static rendezvous (its store listens on every interface)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
            "--master-addr=127.0.0.1", f"--master-port={D.free_port()}", "--local-addr=127.0.0.1",
            "--max-restarts=0", *args]  # fmt: skip


def _listening_addresses(cmd: list[str], out: Path, nproc: int = 2) -> set[str]:
    """Start ``cmd`` (ranks of helpers/dist_listen_worker.py), and once every rank has joined
    and all-reduced, the local addresses of every listening TCP socket of the launcher and its
    children, from the kernel's socket table (psutil)."""
    import psutil

    out.mkdir()
    proc = subprocess.Popen([*cmd, str(WORKER_LISTEN), str(out)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("ready_*"))) < nproc:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the ranks did not join"
            time.sleep(0.1)
        addrs: set[str] = set()
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                addrs |= {c.laddr.ip for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    finally:
        (out / "done").write_text("")
        log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, log[-3000:]
    return addrs


def test_one_machine_run_listens_on_loopback_only(tmp_path):
    """``ccl-lgs train --nproc N`` on one machine: every socket the launcher and the ranks listen
    on is a loopback one. torchrun's own static store (control) listens on every interface."""
    import ipaddress

    ours = _listening_addresses(_torchrun(), tmp_path / "ours")
    assert ours and all(ipaddress.ip_address(a).is_loopback for a in ours), ours
    plain = _listening_addresses(_plain_torchrun(), tmp_path / "plain")
    assert any(not ipaddress.ip_address(a).is_loopback for a in plain), plain  # the check can fail


# ------------------------------------------------------------------------------ fast checks
def test_adam_scaling_follows_gsplat_square_root_rule():
    one = D.DistContext()
    assert one.adam_scaling(0.01, (0.9, 0.999), 1e-15) == (0.01, (0.9, 0.999), 1e-15)
    two = D.DistContext(rank=1, world_size=2, backend="gloo")
    lr, (b1, b2), eps = two.adam_scaling(0.01, (0.9, 0.999), 1e-15)
    assert lr == pytest.approx(0.01 * 2**0.5)
    assert eps == pytest.approx(1e-15 / 2**0.5)
    # gsplat's first-order 1 - k (1 - b): 0.8 and 0.998; b ** k: 0.81 and 0.998001
    assert (b1, b2) == pytest.approx((0.81, 0.998001))
    assert abs(b1 - 0.8) < 0.011 and abs(b2 - 0.998) < 1e-5
    sixteen = D.DistContext(world_size=16)
    assert 0 < sixteen.adam_scaling(1.0)[1][0] < 1  # gsplat's rule would give 1 - 16 * 0.1 < 0
    assert two.scaled_steps(300, True) == 150 and two.scaled_steps(301, True) == 151
    assert two.scaled_steps(300, False) == 300 and one.scaled_steps(300, True) == 300


def test_backend_and_devices():
    assert D.backend_for("cpu") == "gloo"
    assert D.backend_for("cuda") == "nccl" and D.backend_for("cuda:1") == "nccl"
    assert D.rank_device("cuda", 3, 4) == "cuda:3"
    assert D.rank_device("cuda", 0, 1) == "cuda"
    assert D.rank_device("cpu", 1, 2) == "cpu"
    assert D.context().world_size == 1 and not D.context().enabled


def test_launcher_is_loopback_only_on_one_machine():
    argv = D.launcher_argv(2, 1, "", "job", ["train", "a", "b"], master_port=29999)
    assert argv[1:3] == ["-m", "ccl_lgs_ros.torchrun_loopback"]
    assert "--nproc-per-node=2" in argv and "--rdzv-backend=ccl-lgs-loopback" in argv
    assert "--rdzv-endpoint=127.0.0.1:29999" in argv and "--local-addr=127.0.0.1" in argv
    assert argv[-5:] == ["-m", "ccl_lgs_ros", "train", "a", "b"]
    addrs = [a for a in argv if re.search(r"\d+\.\d+\.\d+\.\d+", a)]
    assert all("127.0.0.1" in a for a in addrs)
    multi = D.launcher_argv(8, 2, "10.0.0.5:29400", "run7", ["train"])
    assert "--nnodes=2" in multi and "--rdzv-backend=c10d" in multi and "--rdzv-endpoint=10.0.0.5:29400" in multi
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        D.launcher_argv(2, 2, "", "job", ["train"])
    assert D.strip_option(["train", "--nproc", "2", "x", "--nproc=3", "--json"], "--nproc") == ["train", "x", "--json"]


@pytest.mark.slow
def test_collectives_and_synced_densification(tmp_path):
    """Two gloo ranks: averaged gradients, agreement, and densification decisions."""
    proc = subprocess.run(_torchrun(str(WORKER), str(tmp_path)), env=_env(), capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    for r in res:
        assert r["world_size"] == 2 and r["backend"] == "gloo"
        assert r["g1"] == [1.5, 3.0, 4.5]  # mean of [1,2,3] and [2,4,6]
        assert r["g2"] == [2.5, 3.5]  # rank 1 had none: the mean over both ranks' losses
        assert r["g3"] is None  # no rank had one: Adam skips it, as in one process
        assert r["sent"] == (3 + 2 + 1 + 3) * 4  # float32 gradients + one flag per parameter
        assert r["agree"] == "from rank 0"
        assert r["gather"] == [0, 10]
    assert res[0]["shard"] == [0, 2, 4] and res[1]["shard"] == [1, 3]
    rows = [0, 2, 4, 1, 3]  # rank order
    assert res[0]["gathered"]["means"] == [[3 * r, 3 * r + 1, 3 * r + 2] for r in rows]
    assert res[0]["gathered"]["format_version"] == 1 and res[1]["gathered"] is None
    # Synced: both ranks see both pushed Gaussians (summed statistics) -> 6 + 2, identical.
    assert res[0]["all_synced"][0] == res[0]["all_synced"][1] == [8, res[0]["synced"][1]]
    # Without the sync each rank duplicates only its own Gaussian: same count, different Gaussians.
    (n0, d0), (n1, d1) = res[0]["all_unsynced"]
    assert n0 == n1 == 7 and d0 != d1


# ------------------------------------------------------------------------------ whole pipeline
#: The tiny preset (2 CPU cores; densification off there, the synced densification is checked above
#: with two ranks on gsplat's own strategy), the simulator's priors, frequent checkpoints to resume from.
TRAIN_ARGS = [
    "--preset", "tiny", "--set", "priors.backend=simulator", "--set", "rgb.checkpoint_every=20",
    "--set", "distributed.timeout_s=60",
]  # fmt: skip


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    from ccl_lgs_ros.testing.synth import generate_scene

    out = tmp_path_factory.mktemp("dist") / "capture"
    generate_scene(out, seed=1, width=64, height=48, num_frames=16, num_objects=3)
    return out


def _train_cmd(capture: Path, scene: Path) -> list[str]:
    return ["-m", "ccl_lgs_ros", "train", str(capture), str(scene), *TRAIN_ARGS]


def _quality(scene: Path) -> dict[str, float]:
    from ccl_lgs_ros.eval.run import evaluate

    record = json.loads((scene / "scene.json").read_text())
    res = evaluate(scene, protocol="synthetic")
    return {"psnr": record["stages"]["rgb"]["metrics"]["psnr_test"], "miou": res["2d"]["miou"],
            "f1": res["3d"]["mean_f1"]}  # fmt: skip


@pytest.fixture(scope="module")
def single(capture, tmp_path_factory) -> tuple[Path, dict[str, float]]:
    scene = tmp_path_factory.mktemp("single") / "scene"
    proc = subprocess.run([sys.executable, *_train_cmd(capture, scene)], env=_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return scene, _quality(scene)


def _check_against_single(scene: Path, single: tuple[Path, dict[str, float]]) -> None:
    from ccl_lgs_ros.priors.stage import load_priors

    record = json.loads((scene / "scene.json").read_text())
    for stage in ("rgb", "priors", "field"):
        assert record["stages"][stage]["world_size"] == 2 and record["stages"][stage]["backend"] == "gloo"
    for stage in ("rgb", "field"):  # every rank's parameters, hashed on that rank
        digests = record["stages"][stage]["metrics"]["rank_param_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
        assert record["stages"][stage]["metrics"]["allreduce_bytes_per_step"] > 0
    assert record["stages"]["rgb"]["metrics"]["steps"] == 150  # the tiny preset's 300 iterations / 2 ranks
    # The priors: frames computed on two ranks, association on rank 0 = one process's priors.
    mine, _ = load_priors(scene / "priors")
    ref, _ = load_priors(single[0] / "priors")
    assert len(mine) == len(ref) == 16
    for a, b in zip(mine, ref):
        assert sorted(a.levels) == sorted(b.levels)
        for lv in a.levels:
            np.testing.assert_array_equal(a.levels[lv].masks, b.levels[lv].masks)
            np.testing.assert_array_equal(a.levels[lv].features, b.levels[lv].features)
            np.testing.assert_array_equal(a.levels[lv].labels, b.levels[lv].labels)
    q, q1 = _quality(scene), single[1]
    assert abs(q["psnr"] - q1["psnr"]) <= 0.5, (q, q1)
    assert abs(q["miou"] - q1["miou"]) <= 0.02, (q, q1)
    assert abs(q["f1"] - q1["f1"]) <= 0.02, (q, q1)
    log1 = (scene / "logs" / "rank_1.log").read_text()
    assert "rank 1 of 2" in log1 and "[field]" in log1


@pytest.mark.slow
def test_two_ranks_whole_pipeline_matches_one_process(capture, single, tmp_path):
    scene = tmp_path / "scene"
    proc = subprocess.run(_torchrun(*_train_cmd(capture, scene)), env=_env(CCL_LGS_PROGRESS="json"),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    starts = [ln for ln in lines if ln.get("stage") == "rgb" and ln.get("message") == "start"]
    assert len(starts) == 1  # progress lines from rank 0 only
    assert proc.stdout.count("scene written to") == 1
    _check_against_single(scene, single)


@pytest.mark.slow
def test_two_nodes_on_one_machine(capture, single, tmp_path):
    """torchrun --nnodes 2: two launchers, c10d rendezvous on 127.0.0.1, one rank each."""
    scene = tmp_path / "scene"
    port = D.free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes", "--local-addr=127.0.0.1", "--max-restarts=0",
           *_train_cmd(capture, scene)]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    _check_against_single(scene, single)


@pytest.mark.slow
def test_killed_rank_fails_every_rank_then_the_run_resumes(capture, single, tmp_path):
    scene = tmp_path / "scene"
    t0 = time.monotonic()
    # through `--nproc 2` (ccl-lgs starts torchrun and sums up a failure in its last line)
    proc = subprocess.Popen([sys.executable, *_train_cmd(capture, scene), "--nproc", "2"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    log1 = scene / "logs" / "rank_1.log"
    pid = None
    while time.monotonic() - t0 < 300 and proc.poll() is None:
        if log1.is_file() and list((scene / "rgb").glob("ckpt_*.npz")):  # into the rgb stage, a checkpoint written
            pid = int(re.search(r"rank 1 of 2 \(pid (\d+)", log1.read_text()).group(1))
            break
        time.sleep(0.2)
    assert pid is not None, "rank 1 never reached the rgb stage"
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    _, err = proc.communicate(timeout=120)
    waited = time.monotonic() - t_kill
    assert proc.returncode != 0
    assert waited < 90, f"the job took {waited:.0f} s to end after a rank died"
    last = err.strip().splitlines()[-1]
    assert last.startswith("ccl-lgs train: error: the distributed run failed"), err[-3000:]
    assert "SIGKILL" in last or "lost contact with the other ranks" in last, err[-3000:]
    assert not (scene / "query_index.npz").exists()
    # The same command (up to the interrupted stage, to save CI time) resumes from rank 0's
    # checkpoint and ends like an uninterrupted run.
    proc = subprocess.run(_torchrun(*_train_cmd(capture, scene), "--stage", "rgb"), env=_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((scene / "scene.json").read_text())["stages"]["rgb"]["metrics"]
    assert metrics["resumed_from"] and metrics["resumed_from"] % 20 == 0, metrics
    assert metrics["steps"] == 150 and len(set(metrics["rank_param_digests"])) == 1
    assert abs(metrics["psnr_test"] - single[1]["psnr"]) <= 0.5, (metrics["psnr_test"], single[1])


def test_node_settings_reach_the_trainer_as_overrides():
    from ccl_lgs_ros.config import Config
    from ccl_lgs_ros.supervisor import train_command

    cfg = Config()
    assert D.config_overrides(cfg.distributed) == []
    cfg.distributed.nproc, cfg.distributed.scale_steps, cfg.distributed.rdzv_endpoint = 4, False, "10.0.0.5:29400"
    items = D.config_overrides(cfg.distributed)
    assert items == ["distributed.nproc=4", "distributed.rdzv_endpoint=10.0.0.5:29400", "distributed.scale_steps=false"]
    argv = train_command("cap", "scene", overrides=items)  # validated against the config tree
    assert "--set=distributed.nproc=4" in argv and "--set=distributed.scale_steps=false" in argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_supervisor_cancel_ends_every_rank(capture, tmp_path):
    """The node's trainer with distributed.nproc=2: progress from rank 0, cancel stops both ranks."""
    from ccl_lgs_ros.supervisor import TrainerProcess, train_command

    scene = tmp_path / "scene"
    overrides = ["priors.backend=simulator", "distributed.nproc=2", "rgb.iterations=20000", "distributed.timeout_s=60"]
    argv = train_command(capture, scene, preset="tiny", overrides=overrides)
    events: list = []
    proc = TrainerProcess(argv, on_progress=events.append, env=_env())
    proc.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 240 and proc.running and not any(e.stage == "rgb" and e.step > 0 for e in events):
        time.sleep(0.2)
    assert any(e.stage == "rgb" for e in events), proc.output_tail()
    pids = [int(p) for p in re.findall(r"rank [01] of 2 \(pid (\d+)", proc.output_tail())]
    assert len(set(pids)) == 2, proc.output_tail()
    assert all(_alive(p) for p in pids)
    proc.cancel(grace=10.0)
    out = proc.wait(timeout=30)
    assert out is not None and out.cancelled
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "a rank outlived the cancel"


def test_partitioned_rasterization_is_gsplat_only():
    """On CPU the torch renderer refuses distributed=True with the reason (gsplat's path is CUDA)."""
    import torch

    from ccl_lgs_ros.splat.render import rasterize

    z = torch.zeros
    with pytest.raises(ValueError, match="gsplat's CUDA path"):
        rasterize(z(1, 3), torch.tensor([[1.0, 0, 0, 0]]), z(1, 3), z(1), z(1, 3), torch.eye(4)[None],
                  torch.eye(3)[None], 8, 8, backend="torch", distributed=True)  # fmt: skip


@pytest.mark.slow
def test_gsplat_distributed_rasterization_on_cpu_matches_one_process(tmp_path):
    """gsplat's own distributed rasterization (rasterize(..., distributed=True)) over 2 gloo ranks,
    its CUDA kernels replaced by gsplat's PyTorch twins: each rank's image and the gradients of the
    Gaussians it owns equal one process rendering all Gaussians by both cameras (torch backend)."""
    worker = Path(__file__).parent / "helpers" / "dist_gsplat_worker.py"
    proc = subprocess.run(_torchrun(str(worker), str(tmp_path)), env=_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if proc.returncode != 0 and "moved the private functions" in proc.stderr + proc.stdout:
        pytest.skip("gsplat's private CPU twins moved (see test_splat_gsplat_cpu.py)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        res = json.loads((tmp_path / f"rank_{r}.json").read_text())
        np.testing.assert_allclose(res["image"], res["ref_image"], atol=1e-4)
        assert np.asarray(res["image"]).mean() > 0.01  # the camera sees Gaussians of both ranks
        for got, want in zip(res["grads"], res["ref_grads"]):
            want = np.asarray(want)
            np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max() + 1e-6)


@pytest.mark.gpu
@pytest.mark.slow
def test_gsplat_distributed_rasterization_two_gpus(capture, tmp_path):
    """gsplat's distributed rasterization: 2 ranks on 2 GPUs (NCCL), Gaussians partitioned.

    Not run on this project's machines (no GPU); conftest skips it without CUDA.
    """
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs for 2 NCCL ranks (this machine has {torch.cuda.device_count()})")
    scene = tmp_path / "scene"
    cmd = _torchrun(*_train_cmd(capture, scene), "--device", "cuda", "--set", "distributed.gsplat_distributed=true",
                    "--stage", "rgb")  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((scene / "scene.json").read_text())["stages"]["rgb"]["metrics"]
    assert metrics["partitioned"] and metrics["backend"] == "nccl"
    assert sum(metrics["local_gaussians"]) == metrics["n_gaussians"]


def test_a_failed_run_is_summed_up_by_its_root_cause(capfd):
    """torchrun lists the ranks it stopped (SIGTERM) before the root cause; the summary line names
    the rank that failed first. (A stand-in for torchrun prints its failure report.)"""
    report = "\n".join([
        "Failures:", "[1]:", "  rank      : 0 (local_rank: 0)", "  exitcode  : -15 (pid: 41)  (SIGTERM)",
        "  traceback : Signal 15 (SIGTERM) received by PID 41", "Root Cause (first observed failure):", "[0]:",
        "  rank      : 1 (local_rank: 1)", "  exitcode  : -9 (pid: 42)  (SIGKILL)",
        "  traceback : Signal 9 (SIGKILL) received by PID 42",
    ])  # fmt: skip
    code = f"import sys; sys.stderr.write({report!r} + '\\n'); sys.exit(1)"
    assert D.launch([sys.executable, "-c", code], local=True) == 1
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last == ("ccl-lgs train: error: the distributed run failed (torchrun exit code 1): "
                    "rank : 1 (local_rank: 1); exitcode : -9 (pid: 42) (SIGKILL); "
                    "traceback : Signal 9 (SIGKILL) received by PID 42"), last


def test_the_node_reports_the_launchers_summary_line():
    """The last line `--nproc` writes on a failed run is what the node's failure message picks."""
    from ccl_lgs_ros.supervisor import error_line

    last = ("ccl-lgs train: error: the distributed run failed (torchrun exit code 1): rank : 1 (local_rank: 1); "
            "exitcode : -9 (pid: 42); traceback : Signal 9 (SIGKILL) received by PID 42")  # fmt: skip
    tail = ["INFO ccl_lgs_ros.distributed: rank 0 of 2 (pid 41, backend gloo, device cpu)", "=" * 60, last]
    assert error_line(tail) == last
