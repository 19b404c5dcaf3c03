"""The approximation study (paper Figure 1, left) end to end at a small size."""

from __future__ import annotations

import json

from surm_nlp.experiments import approximation


def test_approximation_study_writes_results(tmp_path):
    report = approximation.main(
        ["--size", "16", "--trials", "2", "--gd_steps", "300", "--ranks", "1", "2", "--output_dir", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "approximation.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "approximation.png").stat().st_size > 0
    rows = {row["label"]: row for row in saved["results"]}
    assert {row["structure"] for row in rows.values()} == {
        "lowrank",
        "kronecker",
        "circulant",
        "symmetric_toeplitz",
        "toeplitz",
        "ldr",
    }
    for row in rows.values():
        assert set(row) >= {"structure", "num_params", "rel_error_mean", "rel_error_std"}
        assert 0.0 < row["rel_error_mean"] < 1.0
    assert rows["toeplitz"]["num_params"] == 31 and rows["circulant"]["num_params"] == 16
    # A PSD matrix has a dominant diagonal; Toeplitz captures it, rank 1 cannot (paper's ordering).
    assert rows["lowrank (rank=1)"]["rel_error_mean"] > rows["toeplitz"]["rel_error_mean"]
    # More rank never hurts an optimal (SVD) fit.
    assert rows["lowrank (rank=2)"]["rel_error_mean"] < rows["lowrank (rank=1)"]["rel_error_mean"]
