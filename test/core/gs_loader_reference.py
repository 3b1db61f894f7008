"""The original 3DGS loader's reading of a ``.ply``, written out again for the tests (not a test module).

Reference: graphdeco-inria/gaussian-splatting, scene/gaussian_model.py, ``GaussianModel.load_ply``,
commit 82bc469015340da5165a15c5cace34b18aa0aca7: properties by name; ``f_rest_*``, ``scale_*`` and
``rot*`` sorted by their number; exactly ``3 ((d + 1)^2 - 1)`` ``f_rest_*`` asserted (``d`` = the
loader's ``sh_degree``, 3 by default); ``f_rest`` reshaped channel-major to ``[N, 3, K-1]`` then
transposed to ``[N, K-1, 3]``.
"""

from __future__ import annotations

import numpy as np
from plyfile import PlyData


def load_ply_3dgs(path, max_sh_degree: int = 3) -> dict[str, np.ndarray]:  # noqa: ANN001 - path-like
    el = PlyData.read(str(path)).elements[0]

    def names(prefix: str) -> list[str]:
        return sorted((p.name for p in el.properties if p.name.startswith(prefix)), key=lambda s: int(s.split("_")[-1]))

    def stack(keys: list[str]) -> np.ndarray:
        return np.stack([np.asarray(el[k]) for k in keys], axis=1)

    xyz = stack(["x", "y", "z"])
    n = xyz.shape[0]
    dc = np.zeros((n, 3, 1))
    for c in range(3):
        dc[:, c, 0] = np.asarray(el[f"f_dc_{c}"])
    rest_names = names("f_rest_")
    assert len(rest_names) == 3 * (max_sh_degree + 1) ** 2 - 3, "the 3DGS loader's assertion"
    rest = np.zeros((n, len(rest_names)))
    for i, k in enumerate(rest_names):
        rest[:, i] = np.asarray(el[k])
    rest = rest.reshape(n, 3, (max_sh_degree + 1) ** 2 - 1)
    return {"xyz": xyz, "opacity": np.asarray(el["opacity"])[:, None], "features_dc": dc.transpose(0, 2, 1),
            "features_rest": rest.transpose(0, 2, 1), "scaling": stack(names("scale_")),
            "rotation": stack(names("rot"))}  # fmt: skip
