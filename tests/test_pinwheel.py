"""The pinwheel study (SURM poster) end to end at a small size."""

from __future__ import annotations

import json
import math

import torch

from surm_nlp.experiments import pinwheel


def test_pinwheel_data_is_deterministic_and_labelled_by_arm():
    points, labels = pinwheel.make_pinwheel(num_classes=4, per_class=50, seed=0, rate=0.0)
    again, _ = pinwheel.make_pinwheel(num_classes=4, per_class=50, seed=0, rate=0.0)
    assert torch.equal(points, again) and points.shape == (200, 2)
    assert torch.equal(labels, torch.arange(4).repeat_interleave(50))
    # Without twist, arm k points along angle 2πk/4: its mean direction is (cos, sin) of that angle.
    for k in range(4):
        mean = points[labels == k].mean(0)
        angle = torch.tensor(2 * math.pi * k / 4)
        assert torch.allclose(mean / mean.norm(), torch.stack([angle.cos(), angle.sin()]), atol=0.05)
        assert abs(mean.norm() - 1) < 0.1  # radius ~ N(1, 0.3²)


def test_pinwheel_study_writes_results(tmp_path):
    argv = ["--num_classes", "3", "--per_class", "40", "--width", "16", "--steps", "300", "--ranks", "1", "16"]
    report = pinwheel.main([*argv, "--ldr_ranks", "1", "--output_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "pinwheel.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "pinwheel.png").stat().st_size > 0
    rows = {row["label"]: row for row in saved["results"]}
    assert set(rows) == {"lowrank (rank=1)", "lowrank (rank=16)", "circulant", "toeplitz", "kronecker", "ldr (rank=1)"}
    expected = {"lowrank (rank=1)": 32, "lowrank (rank=16)": 512, "circulant": 16, "toeplitz": 31}
    expected |= {"kronecker": 32, "ldr (rank=1)": 32}  # 4×4 ⊗ 4×4; 2·rank·n
    for label, row in rows.items():
        assert row["structure_params"] == expected[label]
        assert row["total_params"] == expected[label] + 16 + 16 * 3 + 3  # + hidden bias, readout
        assert 0.0 <= row["train_accuracy"] <= 1.0 and row["train_loss"] >= 0.0
    # A full-rank hidden layer fits three well-separated arms.
    assert rows["lowrank (rank=16)"]["train_accuracy"] > 0.95
