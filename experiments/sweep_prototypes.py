"""SIGMA hyper-parameter sweep entry point (also `sigma-ray sweep`); see sigma_ray/tune/cli.py for the flags."""
import sys
from sigma_ray.tune.cli import main
sys.exit(main())
