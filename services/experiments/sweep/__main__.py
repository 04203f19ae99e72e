"""`python -m services.experiments.sweep run-cell DIR`: the entrypoint of one cell's Ray job."""
import sys

from services.experiments.sweep.run import main

if __name__ == "__main__":
    sys.exit(main())
