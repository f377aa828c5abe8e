"""Texture baking: UV rasterisation, gutter dilation, and a bake of an analytic colour field on a sphere."""
from __future__ import annotations

import numpy as np
import trimesh

from models.texture import bake_texture, dilate, rasterize_uv


def colour_field(points: np.ndarray) -> np.ndarray:
    """A smooth analytic colour (N, 3) in [0.1, 0.9] of points (N, 3)."""
    return 0.5 + 0.4 * np.sin(np.asarray(points) * [2.0, 3.0, 1.5] + [0.3, 1.0, -0.5])


def bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup (N, C) of an (S, S, C) texture at uv (N, 2) (OBJ convention: v up, texel centres at half-integers)."""
    size = image.shape[0]
    x, y = uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return image[np.clip(r, 0, size - 1), np.clip(c, 0, size - 1)]

    return (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
            + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)


def test_bake_on_a_sphere_reproduces_the_field_at_the_vertices(capsys):
    sphere = trimesh.creation.icosphere(subdivisions=3)
    baked = bake_texture(sphere.vertices, sphere.faces, colour_field, size=256)
    progress = capsys.readouterr().err  # a progress bar through the five stages
    assert "texture baking: 100%" in progress and "5/5" in progress and "UV atlas" in progress
    assert baked.image.shape == (256, 256, 3) and len(baked.faces) == len(sphere.faces)
    # The atlas only duplicates vertices along its seams: every new vertex is an old one.
    assert np.abs(np.linalg.norm(baked.vertices, axis=1) - 1.0).max() < 1e-6
    assert ((baked.uv >= 0) & (baked.uv <= 1)).all()
    # The texture looked up (bilinearly) at each vertex's uv gives the field's colour there.
    error = np.abs(bilinear(baked.image, baked.uv) - colour_field(baked.vertices))
    assert error.max() < 0.01, error.max()
    # Every face owns texels, and the charts do not overlap: each face's UV triangle is non-degenerate
    # and their areas sum to less than the unit square.
    _, face_ids, _ = rasterize_uv(baked.uv, baked.faces, 256)
    assert set(face_ids.tolist()) == set(range(len(baked.faces)))
    tri = baked.uv[baked.faces]
    areas = 0.5 * np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
    assert areas.min() > 0 and areas.sum() < 1.0


def test_bake_decimates_large_meshes_first():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    baked = bake_texture(sphere.vertices, sphere.faces, colour_field, size=128, max_faces=300)
    assert len(baked.faces) <= 300
    assert np.abs(bilinear(baked.image, baked.uv) - colour_field(baked.vertices)).max() < 0.02


def test_rasterize_uv_covers_a_square_and_its_margin():
    uv = np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    texels, face_ids, bary = rasterize_uv(uv, faces, 8, margin=0.0)
    # The square spans texel centres 2.5 .. 5.5 in both directions: a 4 x 4 block.
    assert sorted(texels.tolist()) == [r * 8 + c for r in range(2, 6) for c in range(2, 6)]
    np.testing.assert_allclose(bary.sum(1), 1.0)
    # The barycentric mix of the corners' uv is each texel's centre.
    centre = np.stack([(texels % 8 + 0.5) / 8, 1 - (texels // 8 + 0.5) / 8], -1)
    np.testing.assert_allclose((uv[faces[face_ids]] * bary[..., None]).sum(1), centre, atol=1e-12)
    # A margin of one texel adds the ring around the block, with weights extrapolated past the edges.
    texels, face_ids, bary = rasterize_uv(uv, faces, 8, margin=1.0)
    assert len(texels) == 36 and bary.min() < 0  # a 6 x 6 block: corners lie 0.71 texels off the square
    centre = np.stack([(texels % 8 + 0.5) / 8, 1 - (texels // 8 + 0.5) / 8], -1)
    np.testing.assert_allclose((uv[faces[face_ids]] * bary[..., None]).sum(1), centre, atol=1e-12)


def test_dilate_grows_filled_texels_and_fills_the_rest():
    image = np.zeros((7, 7, 3))
    filled = np.zeros((7, 7), bool)
    image[3, 3], filled[3, 3] = [0.2, 0.4, 0.6], True
    image[0, 6], filled[0, 6] = [1.0, 1.0, 1.0], True
    out = dilate(image, filled, iterations=1)
    np.testing.assert_allclose(out[2:5, 2:5].reshape(-1, 3), np.tile([0.2, 0.4, 0.6], (9, 1)))
    np.testing.assert_allclose(out[1, 5], [1.0, 1.0, 1.0])
    # Texels beyond the dilation's reach take the mean colour of the 9 + 4 texels filled by then;
    # the input is left untouched.
    np.testing.assert_allclose(out[6, 0], (9 * np.array([0.2, 0.4, 0.6]) + 4 * np.ones(3)) / 13)
    assert filled.sum() == 2 and image[2, 2].sum() == 0
