"""A building block names its own argument; the stage that built it names the config key."""

from __future__ import annotations

import pytest
from hydra.errors import InstantiationException

from geovq.errors import ConfigError, DataError, ParameterError, caller_names, config_section


def test_a_parameter_error_becomes_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^quantizer\.n_clusters: n_clusters=9 .*quantizer\.n_clusters=\.\.\."):
        with config_section("quantizer"):
            raise ParameterError("n_clusters", "n_clusters=9 is more than n_landmarks=5.")


def test_through_hydras_wrapping_and_a_block_inside_a_block():
    with pytest.raises(ConfigError, match=r"^model\.quantizer\.decay: "):
        with config_section("model"):
            try:
                with caller_names(prefix="quantizer."):
                    raise ParameterError("decay", "decay must lie in (0, 1), got 1.5.")
            except ParameterError as err:
                raise InstantiationException("Error in call to target 'VQVAE'") from err


def test_an_error_about_the_data_names_no_config_key():
    with pytest.raises(ConfigError) as raised:
        with config_section("quantizer", settings={"n_clusters": 128}):
            raise ParameterError("X", "X holds NaN values.")
    assert str(raised.value) == "quantizer: X holds NaN values."


def test_a_user_error_wrapped_by_hydra_comes_out_as_itself():
    with pytest.raises(DataError, match="corrupt"):
        with config_section("data"):
            try:
                raise DataError("the MNIST file x is corrupt.")
            except DataError as err:
                raise InstantiationException("Error in call to target") from err


def test_other_errors_pass_through():
    with pytest.raises(KeyError):
        with config_section("model"):
            raise KeyError("a bug, not a setting")
