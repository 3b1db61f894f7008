"""ROS 2 security settings reach the mapping node, and with ``Enforce`` it fails closed.

What can run here, and what cannot: ROS 2 Jazzy's pip wheels (the ``.venv`` of
``scripts/setup.sh``) ship a Fast DDS built without ``-DSECURITY=ON`` (no DDS Security plugins:
no ``builtin.PKI-DH`` / ``builtin.Access-Permissions`` / ``builtin.AES-GCM-GMAC``; creating a
participant with security enabled fails with "This Fast DDS version doesn't have the security
libraries"), and no ``sros2`` tool. So a node cannot *communicate* securely here, and this file
does not claim it does. What it checks is the part that is the node's own responsibility and
holds on every ROS 2 install:

- the ``ROS_SECURITY_*`` variables and the enclave (``--ros-args --enclave`` or
  ``ROS_SECURITY_ENCLAVE_OVERRIDE``) reach rcl through the node's argument handling (rcl logs
  the enclave folder it picked);
- with ``ROS_SECURITY_STRATEGY=Enforce`` and no usable keys, the node exits with an error
  instead of serving ``/semantic_query`` unsecured;
- with ``Permissive`` and no enclave it does come up (the control: the refusal above is the
  strategy's doing, and ``Permissive`` is no protection, as the README says).

The keystore files written here are placeholders, not certificates (rcl only checks that they
exist; the DDS layer must then reject them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _rosutil import RosClient, RosProcesses, write_blob_scene, write_params

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

ENCLAVE = "/ccl_lgs/mapper"
SECURITY_VARS = tuple(f"ROS_SECURITY_{v}" for v in ("ENABLE", "STRATEGY", "KEYSTORE", "ENCLAVE_OVERRIDE"))
# The files rcl requires in <keystore>/enclaves/<enclave>/ before it enables security.
ENCLAVE_FILES = (
    "identity_ca.cert.pem",
    "cert.pem",
    "key.pem",
    "permissions_ca.cert.pem",
    "governance.p7s",
    "permissions.p7s",
)


@pytest.fixture(autouse=True)
def _no_inherited_security(monkeypatch: pytest.MonkeyPatch, ros_procs: RosProcesses) -> None:
    """Only the node under test gets security settings; this process's client gets none."""
    for key in SECURITY_VARS:
        monkeypatch.delenv(key, raising=False)
        ros_procs.env.pop(key, None)


def _keystore(root: Path, enclaves: tuple[str, ...]) -> Path:
    for enclave in enclaves:
        d = root / "enclaves" / enclave.strip("/")
        d.mkdir(parents=True)
        for name in ENCLAVE_FILES:
            (d / name).write_text("placeholder, not a certificate\n")
    (root / "enclaves").mkdir(parents=True, exist_ok=True)
    return root


def _start(procs: RosProcesses, tmp: Path, keystore: Path, strategy: str, override: bool = False):
    root = tmp / "root"
    if not (root / "scenes" / "lab").exists():
        write_blob_scene(root / "scenes" / "lab", num_gaussians=500)
    pfile = write_params(
        tmp / "p.yaml",
        {
            "node.serve_only": True,
            "node.initial_scene": str(root / "scenes" / "lab"),
            "node.allowed_roots": [str(root)],
            "device": "cpu",
        },
    )
    security = {
        "ROS_SECURITY_ENABLE": "true",
        "ROS_SECURITY_STRATEGY": strategy,
        "ROS_SECURITY_KEYSTORE": str(keystore),
    }
    args = ["-m", "ccl_lgs_ros.ros.mapping_node", "--ros-args", "--params-file", pfile]
    if override:  # the way to give an enclave to every node a launch file starts
        security["ROS_SECURITY_ENCLAVE_OVERRIDE"] = ENCLAVE
    else:
        args += ["--enclave", ENCLAVE]
    return procs.start(args, name=f"mapper_{strategy.lower()}", extra_env=security)


def _refused(procs: RosProcesses, proc) -> str:  # noqa: ANN001
    """The node must exit non-zero without ever serving /semantic_query."""
    try:
        code = proc.wait(timeout=60)
    except Exception:  # noqa: BLE001 - still running: that is the failure
        log = procs.log(proc)
        procs.stop(proc)
        pytest.fail(f"the node kept running with Enforce and unusable keys:\n{log[-4000:]}")
    log = procs.log(proc)
    assert code != 0, log[-4000:]
    assert "/semantic_query is up" not in log, log[-4000:]
    return log


def test_enforce_without_the_nodes_enclave_refuses_to_start(ros_procs, tmp_path):
    keystore = _keystore(tmp_path / "keystore", ("/other/node",))
    log = _refused(ros_procs, _start(ros_procs, tmp_path, keystore, "Enforce"))
    # rcl's reason names the enclave's folder (so --enclave reached it).
    assert str(keystore / "enclaves" / "ccl_lgs" / "mapper") in log, log[-4000:]
    # ... in one plain line, not a traceback
    assert "mapping_node: cannot start ROS 2:" in log and "Traceback" not in log, log[-4000:]


@pytest.mark.parametrize("override", [False, True], ids=["enclave_arg", "enclave_override_env"])
def test_enforce_with_unusable_keys_refuses_to_start(ros_procs, tmp_path, override):
    keystore = _keystore(tmp_path / "keystore", (ENCLAVE,))
    log = _refused(ros_procs, _start(ros_procs, tmp_path, keystore, "Enforce", override=override))
    # rcl found the enclave's folder and handed it to the DDS layer, which refused it: here
    # because the wheels' Fast DDS has no security plugins, elsewhere because the files are
    # not certificates.
    assert f"Found security directory: {keystore / 'enclaves' / 'ccl_lgs' / 'mapper'}" in log, log[-4000:]


def test_permissive_without_enclave_falls_back_to_no_security(ros_procs, tmp_path, ros_env_vars):
    from ccl_lgs_interfaces.srv import GetStatus

    keystore = _keystore(tmp_path / "keystore", ("/other/node",))
    proc = _start(ros_procs, tmp_path, keystore, "Permissive")
    ros_procs.wait_for_line(proc, "/semantic_query is up", timeout=60)
    client = RosClient(int(ros_env_vars["ROS_DOMAIN_ID"]))  # no security settings at all
    try:
        st = client.call(GetStatus, "/ccl_lgs_mapper/get_status", GetStatus.Request()).status
        assert st.scene_loaded
    finally:
        client.close()
    assert ros_procs.stop(proc) == 0
