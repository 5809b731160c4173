"""Evaluating a trained DDPM: the MNIST classifier, the metrics and the ``--eval-ddpm-model`` CLI. Import from
the submodules (``evaluation.cli`` pulls in the training package).
"""
