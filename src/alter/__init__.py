"""alter: small language models as multi-task learners with Mixture-of-Task-Adapters.

The Python surface behind the `alter` command:

    from alter.config import load_config
    from alter.train.run import run_training
    from alter.model import MTAModel

    report = run_training(load_config("configs/tiny.yaml"))
    model = MTAModel.load("runs/tiny/model")
    model.predict(examples)
"""

__version__ = "0.1.0"
