from qtutor.cli import doctor_report, main


def test_doctor_reports_versions_device_triton_and_cache(capsys, smollm2):
    report = doctor_report()
    for key in ("torch", "triton", "transformers", "bitsandbytes", "device", "triton_mode", "model_cache"):
        assert key in report
    assert report["model_cache"].endswith("MB") and ": ok" in report["model_cache"]
    assert main(["doctor"]) == 0
    assert "triton_mode" in capsys.readouterr().out


def test_doctor_triton_mode_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert doctor_report()["triton_mode"].startswith("interpreter")
