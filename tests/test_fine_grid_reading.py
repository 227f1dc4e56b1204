"""The fine grid's reading rule (experiments/image_study_displacement.py, fixed in docs/image-study.md before the
runs): the displacement match is interpolated in log beta_R, and the verdict follows the rule's three cases."""
import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("displacement", ROOT / "experiments" / "image_study_displacement.py")
displacement = importlib.util.module_from_spec(spec)
spec.loader.exec_module(displacement)


def rows(reptile: dict[float, tuple[float, float]], cts_displacement: float = 12.0) -> list[dict]:
    """reptile: {beta_R: (displacement, cosine with CTS)}."""
    out = [{"method": "cts", "meta_lr": 0.01, "displacement": cts_displacement, "cos_with_cts_0.01": 1.0,
            "reptile_equivalent_meta_lr": 1.44}]
    for beta, (d, cos) in reptile.items():
        out.append({"method": "reptile", "meta_lr": beta, "displacement": d, "cos_with_cts_0.01": cos,
                    "fine_grid": beta != 1})
    return out


def test_match_is_interpolated_in_log_beta_and_read_by_the_rule():
    # displacement 10 at beta 1, 14 at 2: CTS's 12 is half way in log beta -> sqrt(2) = 1.414
    r = displacement.fine_grid_reading(rows({0.5: (6, 0.5), 1: (10, 0.7), 2: (14, 0.8), 3: (18, 0.6)}))
    assert math.isclose(r["displacement_match"], math.sqrt(2))
    assert math.isclose(r["old_formula"], 1 - 0.99 ** 200)
    assert r["cosine_peak"] == 2 and r["verdict"] == "confirmed"
    # the match below the midpoint of 1.44 and 0.866 but above 1: not resolved
    r = displacement.fine_grid_reading(rows({0.5: (6, 0.5), 1: (11.5, 0.8), 2: (14, 0.7)}))
    assert 1 < r["displacement_match"] < r["midpoint"] and r["verdict"] == "not resolved"
    # the cosine peaking outside [1, 2] refutes, whatever the displacement
    r = displacement.fine_grid_reading(rows({0.5: (6, 0.9), 1: (10, 0.7), 2: (14, 0.8)}))
    assert r["verdict"] == "refuted"
    # below 1: refuted
    r = displacement.fine_grid_reading(rows({0.5: (10, 0.5), 1: (14, 0.8), 2: (16, 0.7)}))
    assert r["displacement_match"] < 1 and r["verdict"] == "refuted"
