__all__ = ["Trainer", "check_config", "create_ddp_model", "launch"]

from ..config_rules import check_config  # run by the Trainer; exported here too
from .launch import launch
from .trainer import Trainer, create_ddp_model
