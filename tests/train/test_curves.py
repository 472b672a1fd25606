import json

from PIL import Image

from spherear.train.curves import plot_curves


def test_one_panel_per_logged_metric_and_none_for_switched_off_losses(tmp_path):
    records = [{"step": s, "loss": 1 / s, "kl": 2.0, "g": 0.0} for s in range(1, 21)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_curves(tmp_path, ("loss", "kl", "g", "lpips"))
    assert out == tmp_path / "curves.png"
    assert Image.open(out).size == (2 * 400, 300)  # loss and kl: 4 x 3 inches each at 100 dpi
    assert not list(tmp_path.glob("*.tmp.png"))
