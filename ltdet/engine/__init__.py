from .launch import launch
from .trainer import Trainer, check_config, create_ddp_model
