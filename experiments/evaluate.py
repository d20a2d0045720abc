"""Evaluation entry point (also `sigma-ray eval`); see sigma_ray/eval/cli.py for the flags."""
import sys
from sigma_ray.eval.cli import main
sys.exit(main())
