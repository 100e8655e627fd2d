"""webui --localization: the pages' labels in another language, as the web UI's localization files do.

The zh_CN file must translate every label the app shows (its blocks are built and read), name no
label the app does not have, and an unknown localization is refused before anything loads.
"""

import pytest

from diffusion_notes.practice.webui import localization


@pytest.fixture(scope="module")
def labels(pipe, tmp_path_factory):
    from diffusion_notes import pretrained
    from diffusion_notes.practice.webui.app import build_blocks
    from diffusion_notes.practice.webui.models import ModelRegistry
    from diffusion_notes.practice.webui.state import WebUIState

    registry = ModelRegistry(pipe, pretrained.verify("ldm_unet"), tmp_path_factory.mktemp("models"))
    return localization.app_labels(build_blocks(WebUIState(registry, None)))


def test_zh_cn_translates_every_label_of_the_app(labels):
    words = localization.load("zh_CN")
    assert len(labels) > 50
    assert localization.untranslated(words, labels) == []
    assert sorted(set(words) - labels) == [], "translations of labels the app does not show"
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in v) or v == k for k, v in words.items())


def test_a_label_with_its_chapter_is_looked_up_without_it(labels):
    assert "Sampling method" in labels and not any("(ch." in label for label in labels)


def test_an_unknown_localization_is_refused_with_the_ones_there_are():
    with pytest.raises(ValueError, match="available: zh_CN"):
        localization.load("xx_YY")


def test_the_head_carries_the_words_and_the_chapter_form():
    head = localization.head("zh_CN")
    assert '"Generate": "生成"' in head and "（第 %s 章）" in head and "MutationObserver" in head


def test_the_command_refuses_an_unknown_localization_before_loading(capsys, monkeypatch):
    from diffusion_notes import pretrained
    from diffusion_notes.__main__ import main

    def no_models(*args, **kwargs):
        raise AssertionError("the models were loaded before the options were checked")

    monkeypatch.setattr(pretrained, "load", no_models)
    assert main(["webui", "--localization", "xx_YY"]) == 2
    assert "no localization 'xx_YY'; available: zh_CN" in capsys.readouterr().err
