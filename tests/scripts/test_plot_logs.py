"""scripts/plot_logs.py: PNGs from a run's metrics.jsonl."""

import json

from scripts.plot_logs import main, plot, read_metrics


def write_metrics(out_dir, records):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plots_every_panel_and_skips_skipped_steps(tmp_path):
    records = [{"step": s, "loss": 5.0 / s, "lr": 1e-3, "grad_norm": 1.0, "tokens": 64 * s, "tokens_per_sec": 100.0}
               for s in range(1, 6)]
    records.insert(2, {"step": 3, "skipped": 1, "loss": "nan", "grad_norm": "nan"})
    records.append({"step": 5, "val_loss": 4.0, "val_ppl": 54.6, "val_bpb": 1.5})
    write_metrics(tmp_path / "run", records)
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 6  # the skipped record is left out
    written = plot(tmp_path / "run")
    assert sorted(p.name for p in written) == ["grad_norm.png", "loss.png", "lr.png", "throughput.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_missing_metrics_is_exit_code_2(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: no metrics file at")
