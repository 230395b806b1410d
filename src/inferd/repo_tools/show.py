"""`inferd repo show`: a model's effective config, as `inferd serve` would load it (after auto-complete)."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import text_format

from ..config import ConfigError, ModelConfig, config_to_json, read_config, validate_config
from ..graph.ensemble import ENSEMBLE_PLATFORM, is_ensemble
from ..graph.traffic import rule_of
from ..manager import ModelManager
from ..repository import ModelRepository
from ..types import InferError

__all__ = ["effective_config", "render_config"]


def effective_config(repository: Path, name: str) -> ModelConfig:
    """The config model `name` of `repository` loads with; ConfigError (one line) when it would not load."""
    models = ModelRepository([repository])
    folder = models.find(name)
    if folder is None:
        raise ConfigError(f"the repository {repository} holds no model '{name}'")
    config = read_config(folder)
    if config is not None and is_ensemble(config):  # as the manager prepares one, without loading its steps
        config.name = config.name or name
        config.platform = config.platform or ENSEMBLE_PLATFORM
        config.ClearField("instance_group")
        validate_config(config, name)
        rule_of(config)
        return config
    try:
        return ModelManager(models).complete_config(name, folder, config)[0]
    except InferError as exc:
        raise ConfigError(exc.message) from None


def render_config(config: ModelConfig, form: str) -> str:
    """`pbtxt` (config.pbtxt's text format) or `json` (as the server's /v2/models/NAME/config answers)."""
    if form == "json":
        return json.dumps(config_to_json(config), indent=2)
    return str(text_format.MessageToString(config))
