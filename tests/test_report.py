"""diffusion_book.report: what a chapter prints about its checks and live runs, and where it finds the benchmarks."""

import configparser
import json
import re
from pathlib import Path

import pytest
import torch

from diffusion_book.report import below, benchmark_results, book_file, ci, live, results_folder

SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")
ROOT = Path(__file__).resolve().parents[1]


def sanitize(text: str) -> str:
    """Apply tests/nbval_sanitize.cfg's rules in order, as nbval does."""
    config = configparser.ConfigParser()
    config.read(SANITIZE)
    for section in config.sections():
        text = re.sub(config[section]["regex"], config[section]["replace"], text)
    return text


def test_below_prints_the_bound_not_the_digits():
    assert below(3.9e-7, 1e-6) == "< 1e-06"
    assert below(0.02, 0.1) == "< 0.1"
    assert below(torch.tensor([-4.2e-7, 1e-9]), 1e-6) == "< 1e-06"  # the largest |entry|
    assert below(0.0, 1e-12) == "< 1e-12"


@pytest.mark.parametrize("difference", [2e-6, -2e-6, float("nan"), torch.tensor([0.0, 5e-6])])
def test_below_fails_when_the_check_fails(difference):
    with pytest.raises(AssertionError, match="not below"):
        below(difference, 1e-6)


def test_live_prints_an_approximate_figure():
    assert live(0.3612, 0.2, 0.5) == "≈0.36"
    assert live(torch.tensor(0.81), 0.7, 0.9, ".3f") == "≈0.810"
    assert live(12, 10, 20, ".0f") == "≈12"


@pytest.mark.parametrize("value", [0.19, 0.51, float("nan")])
def test_live_fails_outside_its_range(value):
    with pytest.raises(AssertionError, match="outside"):
        live(value, 0.2, 0.5)


def test_the_sanitizer_hides_live_figures_but_keeps_the_sentence():
    a = f"loss: first 10 steps {live(4.22, 3, 5)}, last 20 steps {live(0.34, 0.1, 0.6)}"
    b = f"loss: first 10 steps {live(4.19, 3, 5)}, last 20 steps {live(0.36, 0.1, 0.6)}"
    assert a != b and sanitize(a) == sanitize(b)
    assert sanitize(a) == "loss: first 10 steps ≈NUMBER, last 20 steps ≈NUMBER"
    assert sanitize("accuracy ≈1.00e-03 and ≈-12%") == "accuracy ≈NUMBER and ≈NUMBER%"
    # a figure without the mark is still compared
    assert sanitize("loss 0.34") != sanitize("loss 0.36")


def test_the_sanitizer_takes_whole_animation_frames():
    # matplotlib's player writes each frame's base64 in lines that end with a backslash
    frame = 'frames[0] = "data:image/png;base64,iVBORw0KGgo\\\nAAAANSUhEUg\\\nAAAA+/=\\\n"\n'
    other = 'frames[0] = "data:image/png;base64,iVBORw0KGgo\\\nBBBBNSUhEUg\\\nCCC=\\\n"\n'
    assert sanitize(frame) == sanitize(other) == 'frames[0] = "data:image/IMAGE"\n'
    # the player's HTML around the frames is still compared
    assert sanitize(frame.replace("frames[0]", "frames[1]")) != sanitize(other)


def test_check_prints_every_claim_and_fails_on_a_false_one(capsys):
    from diffusion_book.report import check

    check({"DDIM beats DDPM at 10 steps": True, "loss falls": True})
    assert capsys.readouterr().out == "✓ DDIM beats DDPM at 10 steps\n✓ loss falls\n"
    with pytest.raises(AssertionError, match="loss falls"):
        check({"DDIM beats DDPM at 10 steps": True, "loss falls": False})
    assert "FAILS: loss falls" in capsys.readouterr().out


def test_ci_writes_a_value_with_its_interval_in_both_of_the_benchmarks_forms():
    assert ci({"fidelity": 0.9961, "fidelity_ci": [0.981, 1.0]}, "fidelity") == "1.00 [0.98, 1.00]"
    assert ci({"mean": 40.63, "ci": [39.94, 41.2]}, fmt=".1f") == "40.6 [39.9, 41.2]"
    with pytest.raises(KeyError, match="fidelity_ci"):
        ci({"fidelity": 0.5}, "fidelity")


def test_ci_moves_a_biased_interval_onto_its_value_when_asked():
    record = {"frechet_distance": 2.2561, "frechet_distance_ci": [2.382, 4.155]}  # Chapter 8's unCLIP
    assert ci(record, "frechet_distance", ".1f") == "2.3 [2.4, 4.2]"  # the percentile interval misses 2.26
    assert ci(record, "frechet_distance", ".1f", bias_corrected=True) == "2.3 [1.4, 3.1]"


def test_a_chapter_in_book_and_a_test_in_the_root_find_the_same_benchmark_results(monkeypatch):
    monkeypatch.chdir(ROOT / "book")  # where Jupyter Book, `make execute` and nbval run a chapter
    from_book = benchmark_results("unclip_vs_glide")
    monkeypatch.chdir(ROOT)
    assert results_folder() == ROOT / "benchmarks" / "results"
    assert benchmark_results("unclip_vs_glide") == from_book
    assert from_book == json.loads((ROOT / "benchmarks" / "results" / "unclip_vs_glide.json").read_text())


def test_benchmark_results_takes_the_folder_from_its_caller_and_says_when_there_is_none(tmp_path, monkeypatch):
    (tmp_path / "mine.json").write_text('{"mean": 1.5}')
    assert benchmark_results("mine", tmp_path) == {"mean": 1.5}
    with pytest.raises(FileNotFoundError, match="run python benchmarks/other.py"):
        benchmark_results("other", tmp_path)
    monkeypatch.chdir(tmp_path)  # outside any clone of the repository
    with pytest.raises(FileNotFoundError, match="from a clone"):
        benchmark_results("unclip_vs_glide")



def test_a_book_file_is_found_from_book_and_from_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT / "book")
    from_book = book_file("images/14_webui.png")
    monkeypatch.chdir(ROOT)
    assert book_file("images/14_webui.png") == from_book == ROOT / "book" / "images" / "14_webui.png"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="from a clone"):
        book_file("images/14_webui.png")
