from .checkpoint import (check_checkpoint_file, extract_state_dict, install_safe_globals,
                         load_checkpoint_file, safe_globals)

__all__ = ['check_checkpoint_file', 'extract_state_dict', 'install_safe_globals',
           'load_checkpoint_file', 'safe_globals']
