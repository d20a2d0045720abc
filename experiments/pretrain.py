"""SIGMA pretraining entry point (also `sigma-ray pretrain`); see sigma_ray/train/cli.py for the flags."""
import sys
from sigma_ray.train.cli import main
sys.exit(main())
