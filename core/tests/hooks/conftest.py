"""Fixtures for the plugin-system tests."""

from __future__ import annotations

import pytest

from topgun.hooks import TopgunPluginManager, make_plugin_manager


@pytest.fixture
def pm() -> TopgunPluginManager:
    """A manager with the built-in plugins only: no installed entry points, no environment."""
    return make_plugin_manager(entry_points=(), environ={})
