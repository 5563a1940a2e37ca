"""Training-loop hooks of involution_mm (mmengine), registered as ``involution_mm.<Name>``."""
import torch
from mmengine.hooks import Hook

from .registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Makes a resumed run continue exactly as the uninterrupted one: every checkpoint holds
    torch's random-number states (CPU and CUDA), and resuming restores them.

    mmengine's checkpoints hold the weights, optimizer, schedulers and the iteration, and
    on resume it replays the data of the finished iterations (the data pipeline's numpy
    and ``random`` draws repeat), but not torch's generator, which the model draws from
    (dropout, RoI sampling): without this a resumed run samples other RoIs and dropout
    masks than the uninterrupted one from the first iteration on.

    The states are restored in ``before_train``, after mmengine may have reseeded (a seed
    that differs from the checkpoint's) and before the data replay, which does not draw
    from torch's generator in the main process.
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._loaded = None

    def before_save_checkpoint(self, runner, checkpoint):
        state = {'cpu': torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint['rng_state'] = state

    def after_load_checkpoint(self, runner, checkpoint):
        self._loaded = checkpoint.get('rng_state')

    def before_train(self, runner):
        # runner.iter/epoch > 0 only when resuming; load_from (fine-tuning) starts anew
        if self._loaded is None or (runner.iter == 0 and runner.epoch == 0):
            return
        torch.set_rng_state(self._loaded['cpu'])
        if 'cuda' in self._loaded and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._loaded['cuda'])
        runner.logger.info('RNGStateHook: restored the random-number state of iteration '
                           f'{runner.iter}')
