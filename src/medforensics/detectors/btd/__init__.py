"""Back-in-Time Diffusion (BTD): unsupervised detection and localisation of tampered scans."""

from .detector import BTDDetector
from .model import back_in_time, backward_step, build_scheduler, build_unet, posterior_mean, predict_x0

__all__ = ["BTDDetector", "back_in_time", "backward_step", "build_scheduler", "build_unet", "posterior_mean",
           "predict_x0"]
