"""``python tests/fault_run.py STEP RANK ONCE_FILE|- -- trajshift arguments...``: the trajshift command, SIGKILLed
right after loop step STEP on rank RANK (once, when ONCE_FILE is given). Used by the reliability tests, also under
torchrun."""
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from faults import at_step, send

from trajshift.commands.cli import main
from trajshift.training.loop import MetaTrainer

if __name__ == "__main__":
    step, rank, once = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    assert sys.argv[4] == "--"
    MetaTrainer.after_checkpoint_callbacks.append(
        at_step(step, send(signal.SIGKILL), rank=rank, once=None if once == "-" else once))
    sys.exit(main(sys.argv[5:]))
