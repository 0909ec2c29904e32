"""Tests for tunelab-myplugin, with TuneLab's authoring kit. Run from a TuneLab checkout:

    .venv/bin/python -m pytest path/to/tunelab-myplugin -q

or, with TuneLab installed as a package in your own venv (no checkout), `pytest` in this folder.
"""

import tunelab_myplugin as plugin

pytest_plugins = ["tunelab.core.testing"]


def test_plugin_loads_next_to_the_builtins(register_plugin):
    with register_plugin(plugin, name="tunelab-myplugin") as registry:  # strict: errors raise here
        assert registry.owner("samplers", "cold") == "tunelab-myplugin"
        assert registry.owner("evaluators", "answer_words") == "tunelab-myplugin"


def test_cold_sampler(check_sampler):
    kwargs, _ = check_sampler(plugin.COLD, temperature=0.5)
    assert kwargs == {"do_sample": True, "temperature": 0.5}


def test_answer_words(check_evaluator):
    result = check_evaluator(plugin.ANSWER_WORDS, max_words=3)
    assert result["per_sample"] == [3.0, 3.0, 0.0]  # the kit's three samples, capped at 3 words
