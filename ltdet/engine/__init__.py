from ..config_rules import check_config  # noqa: F401  (run by the Trainer; exported here too)
from .launch import launch
from .trainer import Trainer, create_ddp_model
