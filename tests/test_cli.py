"""efficientnet_tf/cli.py: every command's --help lists its flags, however it was started
(absl lists those of the started file: a console script or a package's __main__.py defines none)."""
import os
import subprocess
import sys

BIN = os.path.dirname(sys.executable)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _help(*command):
    p = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=300, env=ENV)
    # absl's --help exits with 1 after printing; the research command's own help with 0.
    assert p.returncode in (0, 1) and "Traceback" not in p.stderr, p.stderr[-2000:]
    return p.stdout


def test_console_scripts_list_their_flags_in_help():
    for name, flag in [("train", "--precision"), ("export", "--export_dir"),
                       ("predict", "--top_k"), ("convert", "--max_bad_fraction"),
                       ("evaluate", "--model_dir")]:
        script = os.path.join(BIN, f"efficientnet-{name}")
        assert os.path.exists(script), f"{script} missing: run `pip install -e .` again"
        assert f"  {flag}:" in _help(script), (name, flag)


def test_python_m_train_and_research_list_their_flags_in_help():
    text = _help(sys.executable, "-m", "efficientnet_tf.train")
    assert "  --precision:" in text and "  --override:" in text and "  --model_dir:" in text
    text = _help(sys.executable, "-m", "efficientnet_tf.research")
    assert "grid_search" in text and "  --out:" in text and "  --strategy:" in text
