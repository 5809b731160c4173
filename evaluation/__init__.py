"""Evaluating a trained DDPM: the MNIST classifier behind the metrics (``evaluation.classifier``), the metrics
(``evaluation.metrics``), and the ``--eval-ddpm-model`` CLI (``evaluation.cli``, which pulls in the training
package). Import from the submodules.
"""
