"""Train a BD3-LM: `run_mdlm.py` with `--algorithm bd3lm` (same arguments, same outputs).

    accelerate launch trainers/run_bd3lm.py trainers/configs/bd3lm_tiny.yaml
"""

from trainers.run_mdlm import main, parse

if __name__ == "__main__":
    main(*parse(algorithm="bd3lm"))
