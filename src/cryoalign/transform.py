"""4x4 rigid-transform helpers. A transform is named ``T_target_source``."""

from __future__ import annotations

import numpy as np


def make(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def apply(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points."""
    points = np.asarray(points, float)
    return points @ T[:3, :3].T + T[:3, 3]


def rotate(T: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Apply only the rotation part to (N, 3) direction vectors."""
    return np.asarray(vectors, float) @ T[:3, :3].T


def invert(T: np.ndarray) -> np.ndarray:
    R = T[:3, :3]
    return make(R.T, -R.T @ T[:3, 3])


def compose(*Ts: np.ndarray) -> np.ndarray:
    """compose(A, B, C) = A @ B @ C (C applied first)."""
    out = np.eye(4)
    for T in Ts:
        out = out @ T
    return out


def rotation_angle_deg(R: np.ndarray) -> float:
    c = (np.trace(R[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def rotation_axis(R: np.ndarray) -> np.ndarray:
    """Unit axis of a rotation matrix (arbitrary for the identity)."""
    R = R[:3, :3]
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    n = np.linalg.norm(w)
    if n > 1e-8:
        return w / n
    vals, vecs = np.linalg.eigh((R + np.eye(3)) / 2.0)  # angle ~0 or ~180 degrees
    return vecs[:, np.argmax(vals)]


def pose_error(T_est: np.ndarray, T_ref: np.ndarray, center_A=None) -> tuple[float, float]:
    """(rotation error in degrees, translation error in Å at `center_A`) between two transforms."""
    D = T_est @ invert(T_ref)
    c = np.zeros(3) if center_A is None else np.asarray(center_A, float)
    c_ref = apply(T_ref, c[None])[0]
    return rotation_angle_deg(D), float(np.linalg.norm(apply(D, c_ref[None])[0] - c_ref))


def rmsd(T_a: np.ndarray, T_b: np.ndarray, points: np.ndarray) -> float:
    """RMSD (Å) between the same points moved by two transforms."""
    d = apply(T_a, points) - apply(T_b, points)
    return float(np.sqrt((d**2).sum(1).mean()))


def kabsch(source: np.ndarray, target: np.ndarray, weights=None) -> np.ndarray:
    """Weighted least-squares rigid transform mapping `source` (N,3) onto `target` (N,3)."""
    w = np.ones(len(source)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    cs = w @ source
    ct = w @ target
    H = (source - cs).T @ ((target - ct) * w[:, None])
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0
    R = Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
    return make(R, ct - R @ cs)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed rotation matrix from a seeded generator."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def same_pose(
    T1: np.ndarray, T2: np.ndarray, centre_A: np.ndarray, *, max_shift_A: float, max_angle_deg: float
) -> bool:
    """True when the two poses move `centre_A` (3,) to within `max_shift_A` of each other
    and differ by a rotation of less than `max_angle_deg`."""
    c = np.asarray(centre_A, float)
    shift = np.linalg.norm(apply(T1, c[None])[0] - apply(T2, c[None])[0])
    return bool(shift < max_shift_A and rotation_angle_deg(T1[:3, :3] @ T2[:3, :3].T) < max_angle_deg)
