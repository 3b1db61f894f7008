"""3DGS .ply export in the world frame, re-import, and the coloured point cloud."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gs_loader_reference import load_ply_3dgs
from plyfile import PlyData

from ccl_lgs_ros.config import PRESETS, Config
from ccl_lgs_ros.geometry import similarity
from ccl_lgs_ros.ply import read_ply_points
from ccl_lgs_ros.splat.gaussians import GaussianModel
from ccl_lgs_ros.splat.ply import export_point_cloud_ply, export_splat_ply, import_splat_ply
from ccl_lgs_ros.splat.render import rasterize
from ccl_lgs_ros.testing.toy import look_at_viewmat


def _model(n: int = 40, degree: int = 2) -> GaussianModel:
    rng = np.random.default_rng(0)
    model = GaussianModel.from_points(rng.normal(size=(n, 3)) * 0.3, rng.uniform(size=(n, 3)), sh_degree=degree)
    with torch.no_grad():
        model.params["shN"].normal_(0, 0.1)
        model.params["opacities"].uniform_(-3, 3)
        model.params["quats"].normal_()
        model.params["scales"].add_(torch.randn(n, 3) * 0.2)
    return model


def test_splat_ply_layout_and_round_trip(tmp_path):
    model = _model()
    scene_from_world = similarity(0.25, np.array([1.0, -2.0, 0.5]))
    world_from_scene = np.linalg.inv(scene_from_world)
    n = export_splat_ply(tmp_path / "g.ply", model, world_from_scene)
    assert n == len(model)
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = list(v.data.dtype.names)
    rest = [f"f_rest_{i}" for i in range(3 * 15)]  # degree 3 layout (the model is degree 2: zero 3rd band)
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
                     "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
    assert all(v.data.dtype[k] == np.float32 for k in names)
    # World frame: means and scales undo the normalisation (scene = 0.25 * (world - c)).
    raw = model.state_arrays()
    np.testing.assert_allclose(np.stack([v["x"], v["y"], v["z"]], 1), raw["means"] / 0.25 + [1.0, -2.0, 0.5], rtol=1e-5)
    np.testing.assert_allclose(v["scale_0"], raw["log_scales"][:, 0] + np.log(4.0), rtol=1e-5, atol=1e-5)
    # f_rest is channel-major: the first K-1 values are the red channel of every higher band.
    np.testing.assert_allclose([v[f"f_rest_{i}"][3] for i in range(8)], raw["shN"][3, :, 0], rtol=1e-6)
    assert all(not v[f"f_rest_{i}"].any() for i in range(8, 15))
    back = import_splat_ply(tmp_path / "g.ply")
    assert back.sh_degree == 3 and len(back) == len(model)
    for key in ("quats", "opacity_logits", "sh0"):
        np.testing.assert_allclose(back.state_arrays()[key], raw[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(back.state_arrays()["shN"][:, :8], raw["shN"], rtol=1e-6)
    assert not back.state_arrays()["shN"][:, 8:].any()
    # The model's own degree on request.
    export_splat_ply(tmp_path / "own.ply", model, world_from_scene, sh_degree=None)
    assert len([k for k in PlyData.read(str(tmp_path / "own.ply"))["vertex"].data.dtype.names if "rest" in k]) == 24
    # Re-exported without a transform, the file is byte-identical to the first.
    export_splat_ply(tmp_path / "g2.ply", back)
    assert (tmp_path / "g.ply").read_bytes() == (tmp_path / "g2.ply").read_bytes()


def test_world_export_renders_the_same_image_as_the_scene_frame(tmp_path):
    # A camera and Gaussians mapped to the world by the same similarity see the same picture.
    model = _model(degree=0)
    scene_from_world = similarity(0.5, np.array([3.0, 1.0, -1.0]))
    export_splat_ply(tmp_path / "g.ply", model, np.linalg.inv(scene_from_world))
    world = import_splat_ply(tmp_path / "g.ply")
    view_scene = look_at_viewmat(np.array([2.0, 0.5, 0.4]), np.zeros(3))
    # x_cam = V x_scene = V S x_world; dividing camera coordinates by s (the projection does not
    # change) leaves a rigid world-to-camera transform.
    view_world = view_scene @ scene_from_world
    view_world[:3, :] /= 0.5
    K = torch.tensor([[[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]])

    def render(m: GaussianModel, vm: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return rasterize(m.means, m.quats, m.scales, m.opacities, m.sh, torch.tensor(vm, dtype=torch.float32)[None],
                             K, 32, 32, backend="torch", sh_degree=0)[0]  # fmt: skip

    a, b = render(model, view_scene), render(world, view_world)
    assert a.max() > 0.2
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


def test_point_cloud_ply(tmp_path):
    model = _model()
    n = export_point_cloud_ply(tmp_path / "c.ply", model, np.eye(4), min_opacity=0.5)
    keep = model.opacities.detach().numpy() >= 0.5
    assert n == keep.sum() and 0 < n < len(model)
    pts, cols = read_ply_points(tmp_path / "c.ply")
    np.testing.assert_allclose(pts, model.means.detach().numpy()[keep], rtol=1e-6)
    np.testing.assert_allclose(cols, model.to_numpy()["colors"][keep], atol=1 / 255)


def test_import_rejects_a_non_3dgs_ply(tmp_path):
    export_point_cloud_ply(tmp_path / "c.ply", _model())
    with pytest.raises(ValueError, match="missing 3DGS properties"):
        import_splat_ply(tmp_path / "c.ply")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_exports_what_the_original_3dgs_loader_reads(preset, tmp_path):
    degree = int(PRESETS[preset].get("rgb.sh_degree", Config().rgb.sh_degree))
    model = _model(n=12, degree=degree)
    export_splat_ply(tmp_path / "g.ply", model)
    g = load_ply_3dgs(tmp_path / "g.ply")  # raises on a wrong f_rest count
    raw = model.state_arrays()
    np.testing.assert_allclose(g["xyz"], raw["means"], rtol=1e-6)
    np.testing.assert_allclose(g["features_dc"], raw["sh0"], rtol=1e-6)
    k = raw["shN"].shape[1]
    np.testing.assert_allclose(g["features_rest"][:, :k], raw["shN"], rtol=1e-6)
    assert g["features_rest"].shape == (12, 15, 3) and not g["features_rest"][:, k:].any()
    np.testing.assert_allclose(g["opacity"][:, 0], raw["opacity_logits"], rtol=1e-6)
    np.testing.assert_allclose(g["scaling"], raw["log_scales"], rtol=1e-6)
    np.testing.assert_allclose(g["rotation"], raw["quats"], rtol=1e-6)
